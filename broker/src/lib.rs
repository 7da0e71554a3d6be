//! userdb-broker library (being written).
