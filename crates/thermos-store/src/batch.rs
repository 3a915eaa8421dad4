//! What both backends share of a batch insert
//! ([`crate::Store::insert_connections`]): finding the first entry that
//! repeats an earlier one, and the first entry a chunk's insert skipped.
//!
//! Never touches a database; the backends run the statements.

use std::collections::HashMap;
use std::collections::HashSet;

use crate::{NewConnection, StoreError};

/// The error of entry `index`, which repeats entry `earlier` of the batch
/// (`None`: a stored connection).
pub(crate) fn conflict(index: usize, earlier: Option<usize>) -> StoreError {
    StoreError::BatchConflict { index, earlier }
}

/// What a [`StoreError::BatchConflict`] entry collided with, for its message.
pub(crate) fn conflicting_with(earlier: Option<usize>) -> String {
    match earlier {
        Some(earlier) => format!("entry {earlier} of the batch"),
        None => "a stored connection".to_owned(),
    }
}

/// The first entry with the id or the (project, provider, external_id) of
/// an earlier entry, as a [`StoreError::BatchConflict`].
pub(crate) fn first_repeat(new: &[NewConnection]) -> Option<StoreError> {
    let mut ids = HashMap::with_capacity(new.len());
    let mut keys = HashMap::with_capacity(new.len());
    for (index, connection) in new.iter().enumerate() {
        let key = (
            connection.project.as_str(),
            connection.provider.as_str(),
            connection.external_id.as_str(),
        );
        let earlier = ids.insert(connection.id, index).or(keys.insert(key, index));
        if earlier.is_some() {
            return Some(conflict(index, earlier));
        }
    }
    None
}

/// The first entry of `chunk` (which starts at entry `offset` of the batch)
/// whose id the insert did not return: it hit a stored connection. The
/// chunk has no repeated id (see [`first_repeat`]).
pub(crate) fn first_skipped(chunk: &[NewConnection], offset: usize, inserted: &[String]) -> Option<StoreError> {
    if inserted.len() == chunk.len() {
        return None;
    }
    let inserted: HashSet<&str> = inserted.iter().map(String::as_str).collect();
    let index = chunk
        .iter()
        .position(|connection| !inserted.contains(connection.id.to_string().as_str()))?;
    Some(conflict(offset + index, None))
}

#[cfg(test)]
mod tests {
    use thermos_core::id::ConnectionId;
    use thermos_core::seal::Sealed;
    use time::OffsetDateTime;

    use super::*;

    fn entry(external_id: &str) -> NewConnection {
        NewConnection {
            id: ConnectionId::generate(),
            project: "acme".into(),
            provider: "google".into(),
            external_id: external_id.into(),
            access_token: Sealed::from_bytes(b"a".to_vec()),
            refresh_token: None,
            token_type: "Bearer".into(),
            scope: None,
            issued_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            metadata: serde_json::json!({}),
            next_refresh_at: OffsetDateTime::UNIX_EPOCH,
            grant: Default::default(),
            refresh_token_expires_at: None,
        }
    }

    #[test]
    fn a_repeated_key_or_id_names_the_later_entry_and_the_earlier_one() {
        let batch = vec![entry("u0"), entry("u1"), entry("u0")];
        assert!(matches!(
            first_repeat(&batch),
            Some(StoreError::BatchConflict {
                index: 2,
                earlier: Some(0)
            })
        ));
        let mut batch = vec![entry("u0"), entry("u1"), entry("u2")];
        batch[2].id = batch[1].id;
        assert!(matches!(
            first_repeat(&batch),
            Some(StoreError::BatchConflict {
                index: 2,
                earlier: Some(1)
            })
        ));
        assert!(first_repeat(&[entry("u0"), entry("u1")]).is_none());
    }

    #[test]
    fn the_first_entry_not_returned_by_the_insert_is_named_at_its_place_in_the_batch() {
        let chunk = vec![entry("u0"), entry("u1"), entry("u2")];
        let returned = vec![chunk[2].id.to_string(), chunk[0].id.to_string()];
        assert!(matches!(
            first_skipped(&chunk, 500, &returned),
            Some(StoreError::BatchConflict {
                index: 501,
                earlier: None
            })
        ));
        let all: Vec<String> = chunk.iter().map(|c| c.id.to_string()).collect();
        assert!(first_skipped(&chunk, 0, &all).is_none());
    }

    #[test]
    fn the_message_says_what_the_entry_collided_with() {
        assert_eq!(
            conflict(3, Some(1)).to_string(),
            "batch entry 3 has the id or the project, provider and external_id of entry 1 of the batch"
        );
        assert_eq!(
            conflict(3, None).to_string(),
            "batch entry 3 has the id or the project, provider and external_id of a stored connection"
        );
    }
}
