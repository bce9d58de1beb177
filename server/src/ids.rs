//! Typed ids: each name means one thing.
//!
//! * [`QueryId`]: one query a client started (one `GetFlightInfo` ticket, one update). Clients
//!   cancel by it; it names the query in logs on every node.
//! * [`AttemptId`]: one run of a query's physical plan on the cluster. A query that is rerun
//!   after losing an executor has several; executors key a run's memory pool by it, so all of an
//!   attempt's tasks share one pool and a rerun never shares state with the run it replaces.
//! * [`StatementId`]: one prepared statement (`CreatePreparedStatement`); values bound through
//!   `DoPut` are remembered under it.
//! * [`WriteId`]: one write (`CREATE TABLE AS`, `INSERT`, `COPY`, bulk ingest). Every file the
//!   write's attempts produce carries it in its name, and the write journal names its staging
//!   by it, so a failed or crashed write's files can be found and removed.
//!
//! Ids are random, URL-safe text (128 bits), opaque to clients, and travel in tickets, handles
//! and request headers as that text.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// 128 random bits as URL-safe base64 (no padding): 22 characters.
pub(crate) fn random_text() -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails where the OS has no randomness at all; a v4 UUID is the fallback.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return uuid::Uuid::new_v4().simple().to_string();
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(random_text())
            }

            /// An id received as text (a ticket, a handle, a header); `None` when empty.
            pub fn parse(text: &str) -> Option<Self> {
                (!text.is_empty()).then(|| Self(text.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(
    /// One query a client started; see the module doc.
    QueryId
);
typed_id!(
    /// One run of a query's plan on the cluster; see the module doc.
    AttemptId
);
typed_id!(
    /// One prepared statement; see the module doc.
    StatementId
);
typed_id!(
    /// One write; see the module doc.
    WriteId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_url_safe_text() {
        let a = QueryId::random();
        let b = QueryId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 22);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(QueryId::parse(a.as_str()), Some(a));
        assert_eq!(AttemptId::parse(""), None);
    }
}
