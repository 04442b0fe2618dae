//! Configuration from three places, in this order of precedence: command-line
//! flags, the environment (`CA_*`), a TOML file (`--config FILE` or
//! `CA_CONFIG`), then built-in defaults.
//!
//! The clap definition in the `cli` module is the only schema (passed in as
//! the parser type `C`, so this module does not depend on the CLI). A file key is a
//! flag's clap id (its Rust field name: `data_dir`, `crl_validity`,
//! `hostnames`); the global flags sit at the top level and `serve`'s flags in
//! a `[serve]` table. Every such flag has the environment variable
//! `CA_<KEY>` (a unit test holds each flag to that). The file's values become
//! the flags' defaults before clap parses the command line, so clap itself
//! applies flag > environment > file > default, and checks file values with
//! the same parsers as flags.
//!
//! Adding a `serve` flag to the configuration is adding the flag:
//! `#[arg(long, env = "CA_NEW_FLAG")] new_flag: T` in `ServeArgs` (or in an
//! `Args` struct flattened into it) makes `new_flag` a `[serve]` key at once.
//!
//! Unknown keys and sections are refused with their name and line (what
//! serde's `deny_unknown_fields` does, with the schema taken from clap).

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "CA_CONFIG";
/// The file table holding `serve`'s flags.
pub const SERVE_SECTION: &str = "serve";
/// Keys whose values are never printed in full.
const SECRET_KEYS: &[&str] = &["database_url"];

/// One key of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// The values as flags would carry them (several for list keys).
    pub values: Vec<String>,
    /// 1-based line of the key in the file.
    pub line: usize,
}

/// A configuration file, checked against the command line's schema.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// Top-level keys: the global flags.
    pub global: Vec<Setting>,
    /// `[serve]` keys.
    pub serve: Vec<Setting>,
    /// Whether anyone but the owner may read the file.
    pub readable_by_others: bool,
}

/// The result of parsing the command line with a configuration file applied.
#[derive(Debug)]
pub struct Parsed<C> {
    pub cli: C,
    pub matches: ArgMatches,
    pub file: Option<ConfigFile>,
}

/// Parses `args` (program name first): finds the configuration file, applies
/// it as defaults and parses for real. Configuration errors are reported as
/// usage errors (exit code 2) naming the file, line and key.
pub fn parse<C: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> std::result::Result<Parsed<C>, clap::Error> {
    let command = C::command();
    let file = match config_path(&command, &args) {
        Some(path) => Some(ConfigFile::load(&path, &command).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e:#}\n"))
        })?),
        None => None,
    };
    let command = match &file {
        Some(file) => file.apply(command),
        None => command,
    };
    let matches = command.try_get_matches_from(args)?;
    let cli = C::from_arg_matches(&matches)?;
    Ok(Parsed { cli, matches, file })
}

/// `--config` or `CA_CONFIG`, read leniently before the real parse.
fn config_path(command: &Command, args: &[OsString]) -> Option<PathBuf> {
    let pre = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    pre.get_one::<PathBuf>("config").cloned()
}

/// The flags a file may set: the globals (for the top level) or the
/// subcommand `section`'s own.
pub(crate) fn settable_args<'a>(command: &'a Command, section: Option<&str>) -> Vec<&'a Arg> {
    let args: Vec<&Arg> = match section {
        None => command
            .get_arguments()
            .filter(|a| a.is_global_set())
            .collect(),
        Some(name) => command
            .find_subcommand(name)
            .map(|s| s.get_arguments().filter(|a| !a.is_global_set()).collect())
            .unwrap_or_default(),
    };
    args.into_iter()
        .filter(|a| !matches!(a.get_id().as_str(), "config" | "help" | "version"))
        .filter(|a| a.get_long().is_some())
        .collect()
}

/// Whether a flag takes a list (repeatable, or delimited).
fn takes_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
        || arg.get_value_delimiter().is_some()
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl ConfigFile {
    /// Reads and checks `path` against `command`'s flags: unknown sections or
    /// keys, wrong shapes and values the flag's parser refuses are errors
    /// naming the line.
    pub fn load(path: &Path, command: &Command) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        let shown = path.display().to_string();
        let root = toml::de::DeTable::parse(&text).map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(1);
            anyhow::anyhow!("{shown}:{line}: not valid TOML: {}", e.message())
        })?;
        let mut global = Vec::new();
        let mut serve = Vec::new();
        for (key, value) in root.get_ref().iter() {
            let line = line_of(&text, key.span().start);
            let name = key.get_ref().as_ref();
            match value.get_ref() {
                toml::de::DeValue::Table(table) if name == SERVE_SECTION => {
                    for (key, value) in table.iter() {
                        let line = line_of(&text, key.span().start);
                        serve.push(
                            setting(
                                command,
                                Some(SERVE_SECTION),
                                key.get_ref(),
                                value.get_ref(),
                                line,
                            )
                            .with_context(|| format!("{shown}:{line}"))?,
                        );
                    }
                }
                toml::de::DeValue::Table(_) => bail!(
                    "{shown}:{line}: unknown section [{name}] (the only section is [{SERVE_SECTION}])"
                ),
                value => global.push(
                    setting(command, None, name, value, line)
                        .with_context(|| format!("{shown}:{line}"))?,
                ),
            }
        }
        use std::os::unix::fs::PermissionsExt;
        let readable_by_others = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o004 != 0)
            .unwrap_or(false);
        Ok(ConfigFile {
            path: path.to_path_buf(),
            global,
            serve,
            readable_by_others,
        })
    }

    /// `command` with this file's values as the flags' defaults.
    pub fn apply(&self, mut command: Command) -> Command {
        for s in &self.global {
            let values = s.values.clone();
            command = command.mut_arg(s.key.as_str(), |a| a.default_values(values));
        }
        if !self.serve.is_empty() {
            let serve = self.serve.clone();
            command = command.mut_subcommand(SERVE_SECTION, |mut sub| {
                for s in serve {
                    sub = sub.mut_arg(s.key.as_str(), |a| a.default_values(s.values));
                }
                sub
            });
        }
        command
    }

    /// Whether any setting holds a secret (e.g. a password in `database_url`).
    pub fn holds_secret(&self) -> bool {
        self.global
            .iter()
            .chain(&self.serve)
            .any(|s| s.values.iter().any(|v| redact(&s.key, v) != *v))
    }

    fn line_of_key(&self, section: Option<&str>, key: &str) -> Option<usize> {
        let settings = if section.is_some() {
            &self.serve
        } else {
            &self.global
        };
        settings.iter().find(|s| s.key == key).map(|s| s.line)
    }
}

/// Checks one key and turns its value into flag values.
fn setting(
    command: &Command,
    section: Option<&str>,
    key: &str,
    value: &toml::de::DeValue<'_>,
    line: usize,
) -> Result<Setting> {
    let args = settable_args(command, section);
    let place = section.map(|s| format!(" in [{s}]")).unwrap_or_default();
    let Some(arg) = args.iter().find(|a| a.get_id().as_str() == key) else {
        let belongs = section.is_none()
            && settable_args(command, Some(SERVE_SECTION))
                .iter()
                .any(|a| a.get_id().as_str() == key);
        let known: Vec<&str> = args.iter().map(|a| a.get_id().as_str()).collect();
        if belongs {
            bail!("unknown key `{key}` at the top level (it belongs in [{SERVE_SECTION}])");
        }
        bail!(
            "unknown key `{key}`{place} (known keys: {})",
            known.join(", ")
        );
    };
    let values = match value {
        toml::de::DeValue::Array(items) => {
            if !takes_list(arg) {
                bail!("`{key}` takes one value, not a list");
            }
            items
                .iter()
                .map(|v| scalar(key, v.get_ref()))
                .collect::<Result<Vec<_>>>()?
        }
        v => vec![scalar(key, v)?],
    };
    for v in &values {
        check_value(arg, v).map_err(|msg| anyhow::anyhow!("`{key}`{place}: {msg}"))?;
    }
    Ok(Setting {
        key: key.to_owned(),
        values,
        line,
    })
}

/// Runs `value` through the flag's own parser, as if given on the command line.
fn check_value(arg: &Arg, value: &str) -> std::result::Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("expected true or false, got {value:?}")),
        };
    }
    let long = arg.get_long().unwrap_or_default();
    Command::new("config")
        .no_binary_name(true)
        .arg(arg.clone().global(false).required(false))
        .try_get_matches_from([format!("--{long}={value}")])
        .map(|_| ())
        .map_err(|e| {
            let msg = e.to_string();
            msg.lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_owned()
        })
}

/// A TOML scalar as a flag would carry it.
fn scalar(key: &str, value: &toml::de::DeValue<'_>) -> Result<String> {
    use toml::de::DeValue;
    Ok(match value {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            i64::from_str_radix(&digits, i.radix())
                .with_context(|| format!("`{key}`: integer out of range"))?
                .to_string()
        }
        DeValue::Float(f) => f.as_str().replace('_', ""),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) | DeValue::Table(_) => {
            bail!("`{key}` takes a string, number or boolean here")
        }
    })
}

/// A value as it may be shown: passwords in URLs and secret keys replaced.
pub fn redact(key: &str, value: &str) -> String {
    if SECRET_KEYS.contains(&key) {
        let shown = crate::store::redact_url(value);
        // A password given as a URL query parameter (`?password=...`).
        match shown.split_once("password=") {
            Some((head, tail)) => {
                let rest = tail.find('&').map(|i| &tail[i..]).unwrap_or("");
                format!("{head}password=***{rest}")
            }
            None => shown,
        }
    } else {
        value.to_owned()
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Flag,
    Env(String),
    File(usize),
    Default,
    Unset,
}

/// One effective setting, already redacted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Effective {
    pub section: Option<&'static str>,
    pub key: String,
    pub values: Vec<String>,
    pub list: bool,
    pub origin: Origin,
}

/// What `serve` would run with, given this file and this environment, with
/// the global flags given on this command line (`matches`).
pub fn effective(
    base: Command,
    file: Option<&ConfigFile>,
    matches: &ArgMatches,
) -> Result<Vec<Effective>> {
    let command = match file {
        Some(f) => f.apply(base.clone()),
        None => base.clone(),
    };
    let serve_matches = command
        .try_get_matches_from(["ca-server", SERVE_SECTION])
        .context("the configuration does not parse for `serve`")?;
    let sub = serve_matches
        .subcommand_matches(SERVE_SECTION)
        .expect("serve was given");
    let mut out = Vec::new();
    for (section, args) in [
        (None, settable_args(&base, None)),
        (
            Some(SERVE_SECTION),
            settable_args(&base, Some(SERVE_SECTION)),
        ),
    ] {
        for arg in args {
            let id = arg.get_id().as_str();
            // Globals given on this very command line win (flags first).
            let m = if section.is_none()
                && matches.value_source(id) == Some(ValueSource::CommandLine)
            {
                matches
            } else if section.is_none() {
                &serve_matches
            } else {
                sub
            };
            let values: Vec<String> = m
                .get_raw(id)
                .map(|vals| vals.map(|v| redact(id, &v.to_string_lossy())).collect())
                .unwrap_or_default();
            let origin = match m.value_source(id) {
                Some(ValueSource::CommandLine) => Origin::Flag,
                Some(ValueSource::EnvVariable) => Origin::Env(
                    arg.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                Some(ValueSource::DefaultValue) => {
                    match file.and_then(|f| f.line_of_key(section, id)) {
                        Some(line) => Origin::File(line),
                        None => Origin::Default,
                    }
                }
                _ => Origin::Unset,
            };
            out.push(Effective {
                section,
                key: id.to_owned(),
                values,
                list: takes_list(arg),
                origin,
            });
        }
    }
    Ok(out)
}

/// The effective settings as a TOML file (a valid configuration file, with
/// each value's origin in a comment).
pub fn to_toml(settings: &[Effective], file: Option<&ConfigFile>) -> String {
    let mut out = String::from(
        "# Effective ca-server configuration (flags > environment CA_* > file > defaults)\n",
    );
    if let Some(f) = file {
        out.push_str(&format!("# file: {}\n", f.path.display()));
    }
    let mut section = None;
    for s in settings {
        if s.section != section {
            section = s.section;
            out.push_str(&format!("\n[{}]\n", section.unwrap_or("")));
        }
        let origin = match &s.origin {
            Origin::Flag => "flag".to_owned(),
            Origin::Env(name) => format!("env {name}"),
            Origin::File(line) => format!("file, line {line}"),
            Origin::Default => "default".to_owned(),
            Origin::Unset => "not set".to_owned(),
        };
        if s.origin == Origin::Unset || (s.values.is_empty() && !s.list) {
            out.push_str(&format!("# {} =  # {origin}\n", s.key));
            continue;
        }
        let value = if s.list {
            toml::Value::Array(s.values.iter().cloned().map(toml::Value::String).collect())
        } else {
            toml::Value::String(s.values.first().cloned().unwrap_or_default())
        };
        out.push_str(&format!("{} = {value}  # {origin}\n", s.key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("database_url", "postgres://ca:s3cret@db:5432/ca"),
            "postgres://ca:***@db:5432/ca"
        );
        assert_eq!(
            redact(
                "database_url",
                "postgres://ca@db/ca?password=s3cret&sslmode=verify-full"
            ),
            "postgres://ca@db/ca?password=***&sslmode=verify-full"
        );
        assert_eq!(redact("listen", "0.0.0.0:8443"), "0.0.0.0:8443");
    }
}
