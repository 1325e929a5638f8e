//! Domain values, the bottom layer: money, status words, ids, field errors,
//! request building blocks, pagination and the order transitions. They know nothing of HTTP
//! handlers, the broker or the worker; everything else builds on them.

pub mod ids;
pub mod input;
pub mod limits;
pub mod money;
pub mod status;
pub mod transitions;

pub use ids::{LineId, OrderId, ProductId, Version};
pub use input::{FieldError, Input, Page, Pagination, Required};
pub use money::Money;
pub use status::{OrderStatus, StockStatus, ValidationStatus};
