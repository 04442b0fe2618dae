//! The CA's own names: the names of its server certificate and the host of
//! its public URL. No PSK may be bound to one or allow one as an extra name,
//! so a spawner's mistake (or a stolen admin certificate) can never yield a
//! certificate that lets a host impersonate the CA to the fleet.

use crate::decision::AllowedName;

/// A set of names the CA keeps for itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservedNames(Vec<AllowedName>);

/// A name that is the CA's own, and where it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name} is one of the CA's own names (its server certificate or public URL) \
     and cannot be {}", if *.as_san { "an extra name (--san) of a PSK" } else { "bound to a PSK" }
)]
pub struct ReservedName {
    pub name: String,
    /// Asked for with `--san` rather than as the PSK's hostname.
    pub as_san: bool,
}

impl ReservedNames {
    /// Names as configured (`--hostname`, a public URL's host): DNS names are
    /// compared lowercased; text that is no name at all is skipped (the
    /// server refuses to start with it anyway).
    pub fn from_text<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> ReservedNames {
        let mut set = ReservedNames::default();
        for n in names {
            let n = n.as_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            if let Ok(name) = AllowedName::parse(&n) {
                set.insert(name);
            }
        }
        set
    }

    /// Adds a name (once).
    pub fn insert(&mut self, name: AllowedName) {
        if !self.0.contains(&name) {
            self.0.push(name);
        }
    }

    /// The host of a URL (`https://ca.example:8443/path`, `http://[::1]/`), if any.
    pub fn url_host(url: &str) -> Option<String> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']')?.0,
            None => authority.split(':').next()?,
        };
        (!host.is_empty()).then(|| host.to_owned())
    }

    pub fn names(&self) -> &[AllowedName] {
        &self.0
    }

    pub fn contains(&self, name: &AllowedName) -> bool {
        self.0.contains(name)
    }

    /// Refuses a PSK for `hostname` allowing `sans` if any of them is reserved.
    pub fn check(&self, hostname: &str, sans: &[AllowedName]) -> Result<(), ReservedName> {
        let host = hostname.to_ascii_lowercase();
        if self
            .0
            .iter()
            .any(|n| matches!(n, AllowedName::Dns(d) if *d == host))
        {
            return Err(ReservedName {
                name: host,
                as_san: false,
            });
        }
        match sans.iter().find(|s| self.contains(s)) {
            Some(s) => Err(ReservedName {
                name: s.to_string(),
                as_san: true,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_and_extra_names_of_the_ca_are_refused() {
        let mut r = ReservedNames::from_text(["CA.Example.Internal.", "127.0.0.1", "not a name"]);
        r.insert(AllowedName::parse("ca2.example.internal").unwrap());
        assert_eq!(r.names().len(), 3);
        let err = r.check("ca.example.internal", &[]).unwrap_err();
        assert!(!err.as_san);
        assert!(err.to_string().contains("bound to a PSK"), "{err}");
        assert!(r.check("CA2.example.internal", &[]).is_err());
        let err = r
            .check(
                "web.example.internal",
                &[AllowedName::parse("127.0.0.1").unwrap()],
            )
            .unwrap_err();
        assert_eq!(err.name, "127.0.0.1");
        assert!(err.as_san);
        assert!(
            r.check(
                "web.example.internal",
                &[AllowedName::parse("www.example.internal").unwrap()]
            )
            .is_ok()
        );
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            ReservedNames::url_host("https://ca.example:8443/v1").as_deref(),
            Some("ca.example")
        );
        assert_eq!(
            ReservedNames::url_host("http://[::1]:80/").as_deref(),
            Some("::1")
        );
        assert_eq!(
            ReservedNames::url_host("https://u@ca.example").as_deref(),
            Some("ca.example")
        );
        assert_eq!(ReservedNames::url_host("https://"), None);
    }
}
