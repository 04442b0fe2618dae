//! The closed sets of words the store keeps in text columns: audit events,
//! audit outcomes and certificate kinds. Each is an enum with exactly one
//! string form (`as_str`, `FromStr`), the one stored today, so rows written
//! before and after read the same and no migration is needed.

/// A name the enum does not know (a row written by a newer binary, or a typo
/// in a filter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident ($what:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The one string form, as stored.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownName { what: $what, name: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_owned()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }
    };
}

string_enum! {
    /// What an audit row records (`audit.event`).
    Event ("audit event") {
        Sign = "sign",
        Issued = "issued",
        Replayed = "replayed",
        Renew = "renew",
        Renewed = "renewed",
        RenewedAfterExpiry = "renewed_after_expiry",
        RenewReplayed = "renew_replayed",
        Admin = "admin",
        AdminRead = "admin_read",
        AdminCertIssued = "admin_cert_issued",
        ServerCertIssued = "server_cert_issued",
        PskAdded = "psk_added",
        PskRemoved = "psk_removed",
        PskExpired = "psk_expired",
        Revoked = "revoked",
        StoreCopied = "store_copied",
        Acme = "acme",
        AcmeAccount = "acme_account",
        AcmeOrder = "acme_order",
        AcmeRevoke = "acme_revoke",
        /// Counted repeats of an aggregated refusal row (`repeats_of`),
        /// appended to the audit chain (docs/audit.md).
        RefusalRepeats = "refusal_repeats",
    }
}

string_enum! {
    /// How it ended (`audit.outcome`).
    Outcome ("audit outcome") {
        Ok = "ok",
        Issued = "issued",
        Rejected = "rejected",
        Throttled = "throttled",
        Revoked = "revoked",
        Swept = "swept",
        Created = "created",
        Ready = "ready",
        KeyChanged = "key_changed",
        Deactivated = "deactivated",
        /// A refusal repeat row's outcome.
        Counted = "counted",
    }
}

string_enum! {
    /// Whose certificate a row is (`certificates.kind`).
    CertKind ("certificate kind") {
        /// A host's, issued against a PSK, renewed or through ACME.
        Host = "host",
        /// An admin certificate (`admin-cert issue`).
        Admin = "admin",
        /// The CA server's own TLS certificate.
        Server = "server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_string_form_reads_back_as_its_value_and_no_two_share_one() {
        fn check<T: Copy + Eq + std::fmt::Debug + std::str::FromStr<Err = UnknownName>>(
            all: &[T],
            as_str: fn(T) -> &'static str,
        ) {
            let mut seen = std::collections::HashSet::new();
            for &v in all {
                assert!(seen.insert(as_str(v)), "{:?} repeats a string form", v);
                assert_eq!(as_str(v).parse::<T>(), Ok(v));
            }
            assert!("no-such-name".parse::<T>().is_err());
        }
        check(Event::ALL, Event::as_str);
        check(Outcome::ALL, Outcome::as_str);
        check(CertKind::ALL, CertKind::as_str);
    }
}
