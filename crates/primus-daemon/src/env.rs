//! `PRIMUS_*` environment overrides of configuration keys (containers, Kubernetes).
//!
//! `PRIMUS_NODE_ID` sets the top-level key `node_id`; `PRIMUS_RAFT__HEARTBEAT_MS` sets
//! `heartbeat_ms` in `[raft]` (sections are separated by a double underscore; names
//! are lower-cased). A value that parses as a TOML value (`100`, `true`, `[1, 2]`,
//! `{id = 1, addr = "h:1"}`, `"quoted"`) is taken as that value, anything else as a
//! string. The overrides are merged into the file's table before it is deserialised,
//! so every key works without per-key code and unknown keys are refused by the same
//! `deny_unknown_fields` as in the file; every error about an override names the
//! variable. Precedence: file < environment < command-line flag.

use crate::ConfigError;
use std::collections::BTreeSet;
use std::path::Path;

/// The prefix of every override.
pub const ENV_PREFIX: &str = "PRIMUS_";

/// `PRIMUS_*` variables that belong to something else and are never overrides:
/// primusd's and primus-agent's own flags, primusctl's defaults, test-only switches,
/// the test harness, hook environments and scripts. Keep docs/config.md in step.
pub const RESERVED_ENV: &[&str] = &[
    // flags of primusd / primus-agent (clap `env`)
    "PRIMUS_CONFIG",
    "PRIMUS_LOG",
    "PRIMUS_LOG_FORMAT",
    // primusctl
    "PRIMUS_ENDPOINTS",
    "PRIMUS_CA",
    "PRIMUS_CERT",
    "PRIMUS_KEY",
    "PRIMUS_TOKEN_FILE",
    // test only (fault injection)
    "PRIMUS_FAULT_INJECTION",
    "PRIMUS_FAILPOINT",
    "PRIMUS_CLOCK_SKEW_MS",
    "PRIMUS_FEATURE_LEVEL",
    // set for hook commands
    "PRIMUS_HOOK",
    "PRIMUS_FAILURE_TYPE",
    "PRIMUS_FAILURE_DESCRIPTION",
    "PRIMUS_FAILURE_CLUSTER",
    "PRIMUS_FAILED_HOST",
    "PRIMUS_FAILED_PORT",
    "PRIMUS_SUCCESSOR_HOST",
    "PRIMUS_SUCCESSOR_PORT",
    "PRIMUS_IS_SUCCESSFUL",
    "PRIMUS_EPOCH",
    "PRIMUS_FAILOVER_ID",
    "PRIMUS_FAILOVER_KIND",
    "PRIMUS_REASON",
    "PRIMUS_COORDINATOR",
    // the container image (deploy/container) and its compose sandbox
    "PRIMUS_HEALTH_ADDR",
    "PRIMUS_HEALTHCHECK",
    "PRIMUS_HEALTH_TIMEOUT_S",
    "PRIMUS_REPLICATE_FROM",
    // the build, the test harness and the scripts
    "PRIMUS_GIT_COMMIT",
    "PRIMUS_BIN_DIR",
    "PRIMUS_MARIADBD",
    "PRIMUS_TEST_LOG",
    "PRIMUS_TESTKIT_TMPDIR",
    "PRIMUS_TESTKIT_CACHE_DIR",
    "PRIMUS_STORE_TEST_CHILD_DIR",
    "PRIMUS_SANDBOX_DIR",
    "PRIMUS_PROXYSQL_CONF",
    "PRIMUS_NO_LOSS_RUNS",
    "PRIMUS_HANG_RESUME_S",
];

/// One `PRIMUS_*` variable naming a configuration key.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvOverride {
    /// The variable, e.g. `PRIMUS_RAFT__HEARTBEAT_MS`.
    pub var: String,
    /// The key it sets, e.g. `["raft", "heartbeat_ms"]`.
    pub key: Vec<String>,
    /// Its value as written.
    pub raw: String,
}

impl EnvOverride {
    /// The key as `raft.heartbeat_ms`.
    pub fn dotted(&self) -> String {
        self.key.join(".")
    }
}

/// The overrides found in an environment.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    list: Vec<EnvOverride>,
}

fn env_error(var: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Env { var: var.to_string(), key: key.to_string(), message: message.into() }
}

impl EnvOverrides {
    /// The overrides in this process's environment, minus the `reserved` names.
    pub fn from_env(reserved: &[&str]) -> Result<EnvOverrides, ConfigError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().map(str::to_string) else { continue };
            if !name.starts_with(ENV_PREFIX) || reserved.contains(&name.as_str()) {
                continue;
            }
            let value = value.into_string().map_err(|_| env_error(&name, "", "the value is not valid UTF-8"))?;
            vars.push((name, value));
        }
        EnvOverrides::from_vars(vars, reserved)
    }

    /// The overrides among `vars` (name, value), minus the `reserved` names; names
    /// without the `PRIMUS_` prefix are ignored.
    pub fn from_vars<I, K, V>(vars: I, reserved: &[&str]) -> Result<EnvOverrides, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut list = Vec::new();
        for (var, raw) in vars {
            let var: String = var.into();
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
            if reserved.contains(&var.as_str()) {
                continue;
            }
            let key: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if key.iter().any(String::is_empty) {
                return Err(env_error(
                    &var,
                    "",
                    "not a configuration key: expected PRIMUS_KEY or PRIMUS_SECTION__KEY (an empty name between \
                     double underscores)",
                ));
            }
            list.push(EnvOverride { var, key, raw: raw.into() });
        }
        // Whole tables first, so that PRIMUS_MYSQL='{…}' and PRIMUS_MYSQL__USER compose.
        list.sort_by(|a, b| a.key.len().cmp(&b.key.len()).then_with(|| a.var.cmp(&b.var)));
        Ok(EnvOverrides { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &EnvOverride> {
        self.list.iter()
    }

    /// The override that set `key` (`raft.heartbeat_ms`, `initial_members[0].addr`)
    /// or a table or array holding it; the most specific one.
    pub fn for_key(&self, key: &str) -> Option<&EnvOverride> {
        self.list
            .iter()
            .filter(|o| {
                let k = o.dotted();
                key == k
                    || key.strip_prefix(k.as_str()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
            .max_by_key(|o| o.key.len())
    }

    /// A validation error about a key an override set now names the variable.
    pub fn attribute(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { key, message, path } => match self.for_key(&key) {
                Some(o) => env_error(&o.var, &key, message),
                None => ConfigError::Invalid { path, key, message },
            },
            other => other,
        }
    }

    /// Drop the overrides whose variable is named as the value of a `*_env` key (e.g.
    /// `password_env = "PRIMUS_MYSQL_PASSWORD"`): that variable holds a secret, not a key.
    fn without_secret_vars(&self, table: &toml::Table) -> EnvOverrides {
        let mut named = BTreeSet::new();
        collect_env_names(table, &mut named);
        for o in &self.list {
            if o.key.last().is_some_and(|k| k.ends_with("_env")) {
                named.insert(o.raw.trim_matches('"').to_string());
            }
            if let toml::Value::Table(t) = parse_value(&o.raw) {
                collect_env_names(&t, &mut named);
            }
        }
        EnvOverrides { list: self.list.iter().filter(|o| !named.contains(&o.var)).cloned().collect() }
    }
}

fn collect_env_names(table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        match v {
            toml::Value::String(s) if k.ends_with("_env") => {
                out.insert(s.clone());
            }
            toml::Value::Table(t) => collect_env_names(t, out),
            toml::Value::Array(a) => {
                for v in a {
                    if let toml::Value::Table(t) = v {
                        collect_env_names(t, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `raw` as a TOML value when it is one (a number, a boolean, a quoted string, an
/// array, an inline table, a date), else as a string.
pub fn parse_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        _ => toml::Value::String(raw.to_string()),
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn apply(table: &mut toml::Table, o: &EnvOverride, value: toml::Value) -> Result<(), ConfigError> {
    let Some((last, parents)) = o.key.split_last() else {
        return Err(env_error(&o.var, "", "names no key"));
    };
    let mut t = table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = t.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(t) => t,
            other => {
                let at = o.key[..=i].join(".");
                let whole = format!("{ENV_PREFIX}{}", o.key[..=i].join("__").to_ascii_uppercase());
                return Err(env_error(
                    &o.var,
                    &o.dotted(),
                    format!("`{at}` is {}, not a table: set it whole with {whole}", type_name(other)),
                ));
            }
        };
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// Parse `text` (the contents of `path`) as `T` with `env`'s overrides merged in.
/// Without overrides this is exactly [`crate::parse_toml`].
pub fn parse_toml_with_env<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    env: &EnvOverrides,
) -> Result<T, ConfigError> {
    if env.is_empty() {
        return crate::parse_toml(path, text);
    }
    let file: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (location, message) = crate::toml_error_location(text, &e);
        ConfigError::Parse { path: path.to_path_buf(), location, message }
    })?;
    let env = env.without_secret_vars(&file);
    if env.is_empty() {
        return crate::parse_toml(path, text);
    }
    // Values taken as TOML that turn out to be the wrong type are retried as strings
    // (PRIMUS_DATACENTER=1 means the label "1"), each at most once.
    let mut as_string: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut table = file.clone();
        for o in env.iter() {
            let value =
                if as_string.contains(&o.var) { toml::Value::String(o.raw.clone()) } else { parse_value(&o.raw) };
            apply(&mut table, o, value)?;
        }
        let e = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table)) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let message = e.inner().message().replace('\n', " ");
        let mut key = e.path().to_string();
        if key == "." {
            key.clear();
        }
        // "missing field `x`" / "unknown field `x`" are reported at the table holding x.
        let named = message
            .strip_prefix("missing field `")
            .or_else(|| message.strip_prefix("unknown field `"))
            .and_then(|rest| rest.split('`').next());
        if let Some(field) = named {
            if !key.ends_with(field) {
                key = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
            }
        }
        match env.for_key(&key) {
            Some(o) => {
                let retry = message.starts_with("invalid type")
                    && !matches!(parse_value(&o.raw), toml::Value::String(_))
                    && as_string.insert(o.var.clone());
                if !retry {
                    return Err(env_error(&o.var, &key, message));
                }
            }
            None => {
                // A problem in the file: report it as a file-only parse does (with its
                // line) unless that parse only misses keys the environment supplies.
                match crate::parse_toml::<T>(path, text) {
                    Err(file_error) => {
                        if !matches!(&file_error, ConfigError::Parse { message, .. } if message.starts_with("missing field"))
                        {
                            return Err(file_error);
                        }
                    }
                    // The file alone is fine: an override made the table this key is
                    // missing from (PRIMUS_MYSQL__PASSWORD_ENV without a user). Name it.
                    Ok(_) => {
                        let first = key.split(['.', '[']).next().unwrap_or("");
                        if let Some(o) = env.iter().find(|o| o.key.first().is_some_and(|k| k == first)) {
                            return Err(env_error(&o.var, &key, message));
                        }
                    }
                }
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    location: format!(": key `{key}`"),
                    message,
                });
            }
        }
    }
}

/// Read the TOML file `path` and parse it as `T` with `env`'s overrides merged in.
pub fn read_toml_with_env<T: serde::de::DeserializeOwned>(path: &Path, env: &EnvOverrides) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_toml_with_env(path, &text, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        node_id: u64,
        #[serde(default)]
        name: String,
        #[serde(default)]
        raft: Raft,
        #[serde(default)]
        members: Vec<Member>,
        #[serde(default)]
        secret: Option<Secret>,
        #[serde(default)]
        #[allow(dead_code)] // only its errors are looked at
        db: Option<Db>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Db {
        user: String,
        #[serde(default)]
        port: u16,
    }
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Raft {
        heartbeat_ms: u64,
        on: bool,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Member {
        id: u64,
        addr: String,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Secret {
        password_env: String,
    }

    fn parse(text: &str, vars: &[(&str, &str)]) -> Result<Cfg, ConfigError> {
        let env = EnvOverrides::from_vars(vars.iter().copied(), RESERVED_ENV)?;
        parse_toml_with_env(Path::new("c.toml"), text, &env)
    }

    #[test]
    fn values_are_toml_when_they_parse_else_strings() {
        assert_eq!(parse_value("100"), toml::Value::Integer(100));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("0.0.0.0:7100"), toml::Value::String("0.0.0.0:7100".into()));
        assert_eq!(parse_value("\"quoted\""), toml::Value::String("quoted".into()));
        assert_eq!(parse_value("/var/lib/primus"), toml::Value::String("/var/lib/primus".into()));
        assert_eq!(parse_value("1\nnode_id = 2"), toml::Value::String("1\nnode_id = 2".into()));
        assert_eq!(parse_value(""), toml::Value::String(String::new()));
    }

    #[test]
    fn top_level_nested_and_inline_tables_override_the_file() {
        let text = "node_id = 1\nname = \"file\"\n[raft]\nheartbeat_ms = 50\n";
        let c = parse(
            text,
            &[
                ("PRIMUS_NODE_ID", "7"),
                ("PRIMUS_RAFT__HEARTBEAT_MS", "100"),
                ("PRIMUS_RAFT__ON", "true"),
                ("PRIMUS_MEMBERS", r#"[{id=1,addr="primus-0.primus:7100"}, {id = 2, addr = "b:2"}]"#),
                ("HOME", "/root"),
                ("PRIMUS_ENDPOINTS", "x:1"),
            ],
        )
        .unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.name, "file");
        assert_eq!(c.raft.heartbeat_ms, 100);
        assert!(c.raft.on);
        assert_eq!(c.members.len(), 2);
        assert_eq!(c.members[0].addr, "primus-0.primus:7100");
        assert_eq!(c.members[1].id, 2);
        // Only the environment: the file may be empty.
        let c = parse("", &[("PRIMUS_NODE_ID", "3"), ("PRIMUS_NAME", "12")]).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.name, "12", "a number where a string is expected is taken as the string");
    }

    #[test]
    fn errors_name_the_variable() {
        let text = "node_id = 1\n";
        let e = parse(text, &[("PRIMUS_RAFT__HEARTBEAT_MS", "fast")]).unwrap_err().to_string();
        assert!(e.starts_with("config error: PRIMUS_RAFT__HEARTBEAT_MS: invalid type: string \"fast\""), "{e}");
        assert!(e.contains("raft.heartbeat_ms"), "{e}");
        let e = parse(text, &[("PRIMUS_RAFT__TURBO", "1")]).unwrap_err().to_string();
        assert!(e.contains("PRIMUS_RAFT__TURBO: unknown field `turbo`"), "{e}");
        let e = parse(text, &[("PRIMUS_BOGUS", "1")]).unwrap_err().to_string();
        assert!(e.contains("PRIMUS_BOGUS: unknown field `bogus`"), "{e}");
        let e = parse(text, &[("PRIMUS_MEMBERS", "[{id=1}]")]).unwrap_err().to_string();
        assert!(e.contains("PRIMUS_MEMBERS: missing field `addr`"), "{e}");
        let e = parse(text, &[("PRIMUS_DB__PORT", "1")]).unwrap_err().to_string();
        assert!(e.contains("PRIMUS_DB__PORT: missing field `user` (key `db.user`)"), "{e}");
        let e = parse(text, &[("PRIMUS_NODE_ID__X", "1")]).unwrap_err().to_string();
        assert!(e.contains("PRIMUS_NODE_ID__X: `node_id` is an integer, not a table"), "{e}");
        let e = parse(text, &[("PRIMUS_RAFT____X", "1")]).unwrap_err().to_string();
        assert!(e.contains("PRIMUS_RAFT____X: not a configuration key"), "{e}");
        for e in [
            parse(text, &[("PRIMUS_RAFT__HEARTBEAT_MS", "fast")]).unwrap_err().to_string(),
            parse(text, &[("PRIMUS_BOGUS", "1")]).unwrap_err().to_string(),
        ] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn file_errors_keep_their_line_and_missing_keys_their_name() {
        let e = parse("node_id = 1\n[raft]\nheartbeat_ms = \"x\"\n", &[("PRIMUS_NAME", "n")]).unwrap_err().to_string();
        assert!(e.contains("c.toml line 3: key `raft.heartbeat_ms`"), "{e}");
        let e = parse("name = \"x\"\n", &[("PRIMUS_RAFT__ON", "true")]).unwrap_err().to_string();
        assert!(e.contains("c.toml: key `node_id`: missing field `node_id`"), "{e}");
    }

    #[test]
    fn reserved_and_secret_variables_are_not_overrides() {
        let env = EnvOverrides::from_vars(
            [("PRIMUS_FAULT_INJECTION", "1"), ("PRIMUS_ENDPOINTS", "a:1"), ("PRIMUS_LOG", "debug")],
            RESERVED_ENV,
        )
        .unwrap();
        assert!(env.is_empty());
        let c = parse(
            "node_id = 1\n[secret]\npassword_env = \"PRIMUS_DB_PASSWORD\"\n",
            &[("PRIMUS_DB_PASSWORD", "hunter2")],
        )
        .unwrap();
        assert_eq!(c.secret.unwrap().password_env, "PRIMUS_DB_PASSWORD");
        // …also when the *_env key itself comes from the environment.
        let c = parse(
            "node_id = 1\n",
            &[("PRIMUS_SECRET__PASSWORD_ENV", "PRIMUS_DB_PASSWORD"), ("PRIMUS_DB_PASSWORD", "hunter2")],
        )
        .unwrap();
        assert_eq!(c.secret.unwrap().password_env, "PRIMUS_DB_PASSWORD");
    }

    #[test]
    fn validation_errors_about_overridden_keys_name_the_variable() {
        let env = EnvOverrides::from_vars([("PRIMUS_MEMBERS", "[{id=1,addr=\"x\"}]")], RESERVED_ENV).unwrap();
        let e = env.attribute(ConfigError::Invalid {
            path: "c.toml".into(),
            key: "members[0].addr".into(),
            message: "\"x\" is not a HOST:PORT address".into(),
        });
        assert!(e.to_string().starts_with("config error: PRIMUS_MEMBERS: \"x\" is not"), "{e}");
        let e =
            env.attribute(ConfigError::Invalid { path: "c.toml".into(), key: "listen".into(), message: "m".into() });
        assert_eq!(e.to_string(), "config error: c.toml: key `listen`: m");
    }
}
