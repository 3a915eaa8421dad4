//! Grant types (docs/grants.md): a connection's grant type and parameters
//! read back as inserted, alone or in a batch, survive every transition that
//! rewrites the token columns, and default to the user's refresh token. A
//! `jwt_bearer` connection's sealed private key, kept in the refresh token's
//! column, is kept by refreshes that bring no refresh token and is walked by
//! re-encryption like any sealed value.

use std::sync::Arc;

use thermos_core::grant::GrantType;
use thermos_store::reseal::{SealedColumn, SealedOwner};
use thermos_store::{Claim, ConnectionFilter, ConnectionGrant, FinishOutcome, NewConnection, Store};

use crate::support::{T0, at, attempt, connection, due_connection, sealed, tokens};

conformance!(
    a_connection_without_a_grant_type_uses_the_refresh_token_grant,
    client_credentials_and_jwt_bearer_connections_read_back_with_their_grant_alone_or_in_a_batch,
    a_machine_grant_survives_claims_refreshes_failures_and_resets,
    a_refresh_without_a_refresh_token_keeps_the_sealed_private_key,
    a_sealed_private_key_is_walked_and_counted_by_re_encryption,
);

fn client_credentials(external_id: &str) -> NewConnection {
    NewConnection {
        refresh_token: None,
        grant: ConnectionGrant {
            grant_type: GrantType::ClientCredentials,
            params: Some(serde_json::json!({ "scope": "reports.read" })),
        },
        ..connection(external_id)
    }
}

fn jwt_bearer(external_id: &str) -> NewConnection {
    NewConnection {
        refresh_token: Some(sealed("sealed-private-key")),
        grant: ConnectionGrant {
            grant_type: GrantType::JwtBearer,
            params: Some(serde_json::json!({
                "iss": "svc@example.com", "sub": "user@example.com", "aud": "https://auth.example.com/token",
                "scope": "a b", "kid": "k1", "alg": "ES256"
            })),
        },
        ..connection(external_id)
    }
}

pub async fn a_connection_without_a_grant_type_uses_the_refresh_token_grant(store: Arc<dyn Store>) {
    let inserted = store.insert_connection(connection("u1"), T0, Vec::new()).await.unwrap();
    assert_eq!(inserted.grant.grant_type, GrantType::RefreshToken);
    assert_eq!(inserted.grant.params, None);
    let read = store.get_connection(inserted.id).await.unwrap().unwrap();
    assert_eq!(read.grant, ConnectionGrant::default());
}

pub async fn client_credentials_and_jwt_bearer_connections_read_back_with_their_grant_alone_or_in_a_batch(
    store: Arc<dyn Store>,
) {
    for new in [client_credentials("cc"), jwt_bearer("jwt")] {
        let inserted = store.insert_connection(new.clone(), T0, Vec::new()).await.unwrap();
        assert_eq!(inserted.grant, new.grant);
        assert_eq!(inserted.refresh_token, new.refresh_token);
        let read = store.get_connection(new.id).await.unwrap().unwrap();
        assert_eq!(read, inserted);
    }
    let batch = vec![client_credentials("cc-2"), jwt_bearer("jwt-2"), connection("rt-2")];
    store.insert_connections(batch.clone(), T0, Vec::new()).await.unwrap();
    for new in &batch {
        let read = store.get_connection(new.id).await.unwrap().unwrap();
        assert_eq!(read.grant, new.grant, "{}", new.external_id);
    }
    let listed = store
        .list_connections(&ConnectionFilter::default(), None, 10)
        .await
        .unwrap();
    let kinds: Vec<GrantType> = listed.iter().map(|r| r.grant.grant_type).collect();
    assert_eq!(kinds.iter().filter(|g| **g == GrantType::ClientCredentials).count(), 2);
    assert_eq!(kinds.iter().filter(|g| **g == GrantType::JwtBearer).count(), 2);
    assert_eq!(kinds.iter().filter(|g| **g == GrantType::RefreshToken).count(), 1);
}

pub async fn a_machine_grant_survives_claims_refreshes_failures_and_resets(store: Arc<dyn Store>) {
    let new = NewConnection {
        next_refresh_at: at(0),
        ..client_credentials("cc")
    };
    let grant = new.grant.clone();
    let id = store.insert_connection(new, T0, Vec::new()).await.unwrap().id;
    let claimed = store.claim_due("w1", at(1), at(100), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].grant, grant);
    let FinishOutcome::Committed(committed) = store
        .finish_refresh(id, 1, tokens("access-2", 5), attempt("refreshed", 5), Vec::new())
        .await
        .unwrap()
    else {
        panic!("expected a commit")
    };
    assert_eq!(committed.grant, grant);
    assert_eq!(committed.refresh_token, None);
    let Claim::Claimed(leased) = store.claim_connection(id, "w2", at(10), at(100)).await.unwrap() else {
        panic!("expected a claim")
    };
    assert_eq!(leased.grant, grant);
    store
        .record_failure(
            id,
            leased.version,
            crate::support::failure(thermos_core::status::ConnectionStatus::Failing, 1, 11, Some(20)),
            attempt("failed", 11),
            Vec::new(),
        )
        .await
        .unwrap();
    let reset = store.reset_connection(id, at(12)).await.unwrap().unwrap();
    assert_eq!(reset.grant, grant);
    let other = store
        .insert_connection(due_connection("rt", 0), T0, Vec::new())
        .await
        .unwrap();
    assert_eq!(other.grant, ConnectionGrant::default());
}

pub async fn a_refresh_without_a_refresh_token_keeps_the_sealed_private_key(store: Arc<dyn Store>) {
    let new = jwt_bearer("jwt");
    let id = store.insert_connection(new, T0, Vec::new()).await.unwrap().id;
    for (version, issued) in [(1, 5), (2, 10)] {
        let FinishOutcome::Committed(committed) = store
            .finish_refresh(
                id,
                version,
                tokens("access", issued),
                attempt("refreshed", issued),
                Vec::new(),
            )
            .await
            .unwrap()
        else {
            panic!("expected a commit")
        };
        assert_eq!(committed.refresh_token, Some(sealed("sealed-private-key")));
        assert_eq!(committed.grant.grant_type, GrantType::JwtBearer);
    }
}

pub async fn a_sealed_private_key_is_walked_and_counted_by_re_encryption(store: Arc<dyn Store>) {
    let new = jwt_bearer("jwt");
    let id = new.id;
    store.insert_connection(new, T0, Vec::new()).await.unwrap();
    let page = store.sealed_values_page(None, 10, None).await.unwrap();
    assert!(page.iter().any(|v| v.owner == SealedOwner::Connection(id)
        && v.column == SealedColumn::RefreshToken
        && v.sealed == sealed("sealed-private-key")));
    let counted: u64 = store
        .count_sealed_by_key_id()
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(counted, 2, "the access token and the private key");
}
