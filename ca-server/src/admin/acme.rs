//! The `acme` admin verbs: `acme accounts [--host H] [--json]` lists ACME
//! accounts (the grant each spent PSK carried), `acme deactivate ACCOUNT`
//! ends one; local or remote like the other verbs, printed the same way.

use super::{Admin, AdminError, Ops};
use crate::store::{AcmeAccount, AuditEvent};
use crate::store::{Event, Outcome};
use policy::hostname::escape_for_display;
use serde::{Deserialize, Serialize};

/// An account as operators see it (never the key itself: its thumbprint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcmeAccountView {
    pub id: String,
    pub hostname: String,
    pub allowed_sans: Vec<String>,
    pub status: String,
    pub key_thumbprint: String,
    pub contact: Vec<String>,
    pub created_at: String,
}

impl From<&AcmeAccount> for AcmeAccountView {
    fn from(a: &AcmeAccount) -> AcmeAccountView {
        AcmeAccountView {
            id: a.id.clone(),
            hostname: a.hostname.clone(),
            allowed_sans: a.allowed_sans.clone(),
            status: a.status.clone(),
            key_thumbprint: a.thumbprint.clone(),
            contact: a.contact.clone(),
            created_at: proto::timefmt::rfc3339(a.created_at),
        }
    }
}

/// `acme accounts` filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeAccountQuery {
    #[serde(default)]
    pub host: Option<String>,
}

impl Ops<'_> {
    pub async fn acme_accounts(
        &self,
        q: &AcmeAccountQuery,
    ) -> Result<Vec<AcmeAccountView>, AdminError> {
        Ok(self
            .store
            .acme_accounts(q.host.as_deref())
            .await?
            .iter()
            .map(AcmeAccountView::from)
            .collect())
    }

    /// Deactivates an account: it can order no more (its certificates stay
    /// valid; `revoke` them separately).
    pub async fn acme_deactivate(&self, id: &str) -> Result<AcmeAccountView, AdminError> {
        let Some(account) = self.store.acme_account(id).await? else {
            return Err(AdminError::NotFound(format!(
                "no ACME account {}",
                escape_for_display(id)
            )));
        };
        let audit = AuditEvent {
            outcome: Outcome::Deactivated.into(),
            ..self.audit_event(
                Event::AcmeAccount,
                Some(account.hostname.clone()),
                Some(format!(
                    "account {}; key {}",
                    account.id, account.thumbprint
                )),
            )
        };
        if !self.store.deactivate_acme_account(id, &audit).await? {
            return Err(AdminError::Invalid(format!(
                "ACME account {} is already {}",
                escape_for_display(id),
                account.status
            )));
        }
        let account = AcmeAccount {
            status: "deactivated".into(),
            ..account
        };
        Ok(AcmeAccountView::from(&account))
    }
}

impl Admin {
    pub async fn acme_accounts(
        &self,
        q: &AcmeAccountQuery,
    ) -> Result<Vec<AcmeAccountView>, AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).acme_accounts(q).await,
            Admin::Remote(r) => r.acme_accounts(q).await,
        }
    }

    pub async fn acme_deactivate(&self, id: &str) -> Result<AcmeAccountView, AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).acme_deactivate(id).await,
            Admin::Remote(r) => r.acme_deactivate(id).await,
        }
    }
}

/// `acme accounts`: one line (or JSON line) per account.
pub fn print_accounts(accounts: &[AcmeAccountView], json: bool) -> anyhow::Result<()> {
    for a in accounts {
        if json {
            println!("{}", serde_json::to_string(a)?);
        } else {
            println!(
                "{} {} {} created_at={} key={}{}",
                a.id,
                a.status,
                escape_for_display(&a.hostname),
                a.created_at,
                a.key_thumbprint,
                if a.allowed_sans.is_empty() {
                    String::new()
                } else {
                    format!(" sans={}", a.allowed_sans.join(","))
                }
            );
        }
    }
    Ok(())
}

/// `acme` verbs.
#[derive(Debug, clap::Args)]
pub struct AcmeArgs {
    #[command(flatten)]
    pub remote: super::RemoteArgs,
    #[command(subcommand)]
    pub command: AcmeCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AcmeCommand {
    /// List ACME accounts (each created by spending a host's PSK).
    Accounts {
        /// Only this host's accounts.
        #[arg(long)]
        host: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Deactivate an ACME account: it can order no more certificates.
    Deactivate {
        /// The account id (the last part of its URL, as `acme accounts` lists it).
        account: String,
        /// Print the account as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `acme` verb.
pub async fn run(args: AcmeArgs, data_dir: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let admin = Admin::open(&args.remote, data_dir, url).await?;
    match args.command {
        AcmeCommand::Accounts { host, json } => print_accounts(
            &admin.acme_accounts(&AcmeAccountQuery { host }).await?,
            json,
        ),
        AcmeCommand::Deactivate { account, json } => {
            let a = admin.acme_deactivate(&account).await?;
            if json {
                println!("{}", serde_json::to_string(&a)?);
            } else {
                println!("deactivated {} ({})", a.id, escape_for_display(&a.hostname));
            }
            Ok(())
        }
    }
}
