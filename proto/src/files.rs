//! The file names of a host's certificate directory, shared by `ca-client`
//! (which writes them) and the server's `cert issue`/remote admin (which read
//! or write the same layout).

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const CHAIN_FILE: &str = "chain.pem";
pub const CA_FILE: &str = "ca.pem";
pub const PENDING_KEY_FILE: &str = "pending-key.pem";
