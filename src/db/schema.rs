// @generated automatically by Diesel CLI.

diesel::table! {
    commandes (id) {
        id -> Int8,
        #[max_length = 16]
        statut -> Varchar,
        timestamp -> Timestamptz,
        #[max_length = 16]
        validation -> Nullable<Varchar>,
        motif -> Nullable<Text>,
        validation_commencee_le -> Nullable<Timestamptz>,
        validation_echeance -> Nullable<Timestamptz>,
        validation_terminee_le -> Nullable<Timestamptz>,
        nb_lignes -> Int4,
    }
}

diesel::table! {
    commandes_produits (id) {
        id -> Int8,
        commande_id -> Int8,
        produit_id -> Int8,
        quantite -> Int4,
        prix_unitaire -> Numeric,
        #[max_length = 16]
        statut_stock -> Varchar,
        version -> Int8,
        modifiee_le -> Timestamptz,
    }
}

diesel::table! {
    evenements_traites (message_id) {
        message_id -> Uuid,
        traite_le -> Timestamptz,
    }
}

diesel::table! {
    historique_lignes (message_id) {
        message_id -> Uuid,
        ligne_id -> Int8,
        commande_id -> Int8,
        version -> Int8,
        #[max_length = 16]
        action -> Varchar,
        produit_id -> Int8,
        quantite -> Int4,
        #[max_length = 128]
        request_id -> Nullable<Varchar>,
        accepte_le -> Timestamptz,
        publie_le -> Nullable<Timestamptz>,
        applique_le -> Nullable<Timestamptz>,
        #[max_length = 16]
        resultat -> Nullable<Varchar>,
        motif -> Nullable<Text>,
        #[max_length = 128]
        client_request_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    messages_traites (message_id) {
        message_id -> Uuid,
        traite_le -> Timestamptz,
    }
}

diesel::table! {
    mouvements (id) {
        id -> Int8,
        produit_id -> Int8,
        ligne_id -> Nullable<Int8>,
        commande_id -> Nullable<Int8>,
        message_id -> Nullable<Uuid>,
        #[max_length = 16]
        action -> Varchar,
        delta -> Int4,
        quantite_en_stock -> Int4,
        occurred_at -> Nullable<Timestamptz>,
        applique_le -> Timestamptz,
        #[max_length = 128]
        request_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        message_id -> Uuid,
        #[max_length = 255]
        exchange -> Varchar,
        #[max_length = 255]
        routing_key -> Varchar,
        payload -> Text,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        #[max_length = 128]
        request_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    produits (id) {
        id -> Int8,
        #[max_length = 200]
        nom -> Varchar,
        description -> Nullable<Text>,
        prix -> Numeric,
        quantite_en_stock -> Int4,
    }
}

diesel::table! {
    reservations (ligne_id) {
        ligne_id -> Int8,
        produit_id -> Nullable<Int8>,
        quantite -> Int4,
        version -> Int8,
    }
}

diesel::table! {
    validation_lignes (commande_id, ligne_id) {
        commande_id -> Int8,
        ligne_id -> Int8,
        version -> Int8,
        produit_id -> Int8,
        quantite -> Int4,
        #[max_length = 16]
        resultat -> Nullable<Varchar>,
        disponible -> Nullable<Int4>,
    }
}

diesel::joinable!(commandes_produits -> commandes (commande_id));
diesel::joinable!(commandes_produits -> produits (produit_id));
diesel::joinable!(mouvements -> produits (produit_id));
diesel::joinable!(validation_lignes -> commandes (commande_id));

diesel::allow_tables_to_appear_in_same_query!(
    commandes,
    commandes_produits,
    evenements_traites,
    historique_lignes,
    messages_traites,
    mouvements,
    outbox,
    produits,
    reservations,
    validation_lignes,
);
