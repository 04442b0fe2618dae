//! A command's failure with the exit code it maps to (see `main.rs`), for
//! the commands that chain several steps (`renew`, `crl`): each step's own
//! error type picks the code, the message keeps the whole chain.

use crate::bootstrap::{BootstrapError, exit};
use crate::install::InstallError;

/// A failure and its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<BootstrapError> for Failure {
    fn from(e: BootstrapError) -> Failure {
        Failure::new(e.exit_code(), e)
    }
}

impl From<InstallError> for Failure {
    fn from(e: InstallError) -> Failure {
        Failure::new(e.exit_code(), e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::new(exit::ERROR, e)
    }
}
