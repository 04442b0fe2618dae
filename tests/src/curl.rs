//! curl as an independent HTTPS client for the tests: any method, request
//! headers, and the response's status, headers and raw body.

use crate::{CaServer, run};
use std::path::Path;
use std::process::Command;

/// What curl got back.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    /// The raw response header block (status line included).
    pub headers: String,
    pub body: Vec<u8>,
}

impl CurlReply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl -X METHOD` against `server` (trusting its root), with extra
/// `headers` ("Name: value") and the body read from `body`, if any.
pub fn curl(
    server: &CaServer,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&Path>,
) -> CurlReply {
    let tmp = tempfile::tempdir().unwrap();
    let (head, out) = (tmp.path().join("head"), tmp.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "--cacert"])
        .arg(server.root_pem())
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(body) = body {
        cmd.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    cmd.arg(format!("{}{path}", server.url));
    let shown = format!("{cmd:?}");
    let result = run(&mut cmd);
    assert!(
        result.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    CurlReply {
        status: String::from_utf8_lossy(&result.stdout)
            .trim()
            .parse()
            .unwrap(),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read(&out).unwrap_or_default(),
    }
}
