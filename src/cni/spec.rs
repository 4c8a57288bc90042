//! CNI (Container Network Interface) spec layer: the `CNI_*` environment, network configuration
//! parsing, version-aware result rendering, and the spec's error codes.
//!
//! This module does no I/O of its own. The environment is read through a lookup closure
//! ([`CniEnv::from_lookup`]), the network configuration arrives as the bytes read from stdin
//! ([`NetConf::parse`]), and results and errors are returned as [`serde_json::Value`]s for the
//! caller to print.
//!
//! Supported spec versions: see [`SUPPORTED_VERSIONS`]. Results for 0.3.x and 0.4.0 carry an
//! `ips[].version` field; 1.x results do not.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

/// Every CNI spec version this plugin can speak, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version; used when the runtime did not ask for one.
pub const LATEST_VERSION: &str = "1.1.0";

/// Where the agent's API socket is when the network configuration does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/cilium/cilium.sock";

/// True when `version` is one of [`SUPPORTED_VERSIONS`].
pub fn is_supported_version(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS.join(", ")
}

fn incompatible_version(version: &str) -> CniError {
    CniError::new(
        ErrorCode::IncompatibleCniVersion,
        format!(
            "incompatible CNI version {version:?}: this plugin supports {}",
            supported_list()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Error codes from the CNI spec's "Error" section, plus plugin-specific codes (>= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleCniVersion,
    /// 2: unsupported field in network configuration.
    UnsupportedField,
    /// 3: container unknown or does not exist.
    UnknownContainer,
    /// 4: invalid necessary environment variables.
    InvalidEnvironmentVariables,
    /// 5: I/O failure.
    IoFailure,
    /// 6: failed to decode content.
    DecodingFailure,
    /// 7: invalid network config.
    InvalidNetworkConfig,
    /// 11: try again later.
    TryAgainLater,
    /// 50: the plugin is not available (STATUS: e.g. the agent is down).
    PluginNotAvailable,
    /// 51: the plugin is available but has limited connectivity.
    LimitedConnectivity,
    /// Plugin-specific code; by the spec these are 100 and above.
    Plugin(u32),
}

impl ErrorCode {
    /// 100: the cilium agent cannot be reached over its API socket.
    pub const AGENT_UNREACHABLE: ErrorCode = ErrorCode::Plugin(100);
    /// 101: the IP pool has no free address.
    pub const IP_POOL_EXHAUSTED: ErrorCode = ErrorCode::Plugin(101);
    /// 102: setting up the container's link failed.
    pub const LINK_SETUP_FAILED: ErrorCode = ErrorCode::Plugin(102);
    /// 103: the agent answered but rejected the request.
    pub const AGENT_REJECTED: ErrorCode = ErrorCode::Plugin(103);

    /// The numeric code written into the error JSON.
    pub fn code(&self) -> u32 {
        match self {
            ErrorCode::IncompatibleCniVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironmentVariables => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::Plugin(n) => *n,
        }
    }

    /// The inverse of [`ErrorCode::code`]: well-known numbers map to their variant, anything
    /// else to `Plugin(n)`.
    pub fn from_code(n: u32) -> ErrorCode {
        match n {
            1 => ErrorCode::IncompatibleCniVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironmentVariables,
            5 => ErrorCode::IoFailure,
            6 => ErrorCode::DecodingFailure,
            7 => ErrorCode::InvalidNetworkConfig,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::PluginNotAvailable,
            51 => ErrorCode::LimitedConnectivity,
            n => ErrorCode::Plugin(n),
        }
    }

    /// A short human description of the code.
    pub fn description(&self) -> &'static str {
        match self {
            ErrorCode::IncompatibleCniVersion => "incompatible CNI version",
            ErrorCode::UnsupportedField => "unsupported field in network configuration",
            ErrorCode::UnknownContainer => "container unknown or does not exist",
            ErrorCode::InvalidEnvironmentVariables => "invalid environment variables",
            ErrorCode::IoFailure => "I/O failure",
            ErrorCode::DecodingFailure => "failed to decode content",
            ErrorCode::InvalidNetworkConfig => "invalid network configuration",
            ErrorCode::TryAgainLater => "try again later",
            ErrorCode::PluginNotAvailable => "plugin not available",
            ErrorCode::LimitedConnectivity => "limited connectivity",
            ErrorCode::Plugin(100) => "cilium agent unreachable",
            ErrorCode::Plugin(101) => "IP pool exhausted",
            ErrorCode::Plugin(102) => "link setup failed",
            ErrorCode::Plugin(103) => "cilium agent rejected the request",
            ErrorCode::Plugin(_) => "plugin-specific error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.description())
    }
}

/// An error as the CNI spec reports it: a code, a message and optional details.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{msg}")]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(self, d: impl Into<String>) -> Self {
        CniError {
            details: d.into(),
            ..self
        }
    }

    /// Code 100: the agent's API socket cannot be reached. `cause` goes into the details.
    pub fn agent_unreachable(socket: &str, cause: impl fmt::Display) -> Self {
        CniError::new(
            ErrorCode::AGENT_UNREACHABLE,
            format!(
                "cannot reach the cilium agent at {socket}: is the cilium agent running? \
                 start it with `cilium agent` or `cilium local up`"
            ),
        )
        .with_details(cause.to_string())
    }

    /// Code 101: no free address in the pool.
    pub fn ip_pool_exhausted(pool: &str) -> Self {
        CniError::new(
            ErrorCode::IP_POOL_EXHAUSTED,
            format!("IP pool {pool} is exhausted: no free address to give the container"),
        )
    }

    /// Code 102: the container's link could not be set up.
    pub fn link_setup_failed(ifname: &str, cause: impl fmt::Display) -> Self {
        CniError::new(
            ErrorCode::LINK_SETUP_FAILED,
            format!("setting up link {ifname} failed"),
        )
        .with_details(cause.to_string())
    }

    /// Code 103: the agent answered but refused the request.
    pub fn agent_rejected(reason: impl fmt::Display) -> Self {
        CniError::new(
            ErrorCode::AGENT_REJECTED,
            format!("the cilium agent rejected the request: {reason}"),
        )
    }

    /// `{"cniVersion": version, "code": n, "msg": "...", "details": "..."}`; `details` is
    /// omitted when empty.
    pub fn to_json(&self, version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), Value::from(version));
        m.insert("code".into(), Value::from(self.code.code()));
        m.insert("msg".into(), Value::from(self.msg.as_str()));
        if !self.details.is_empty() {
            m.insert("details".into(), Value::from(self.details.as_str()));
        }
        Value::Object(m)
    }

    /// Reads an error object back (e.g. one printed by a chained plugin). `None` when `v` has no
    /// numeric `code`.
    pub fn from_json(v: &Value) -> Option<CniError> {
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
        Some(CniError::new(ErrorCode::from_code(code), msg).with_details(details))
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and the CNI_* environment
// ---------------------------------------------------------------------------------------------

/// The value of `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    /// Every command, in the order the spec lists them.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Version,
        Command::Status,
        Command::Gc,
    ];

    /// Parses a `CNI_COMMAND` value (upper case, as the spec writes them). Anything else is
    /// code 4.
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = Command::ALL.iter().map(Command::as_str).collect();
                CniError::new(
                    ErrorCode::InvalidEnvironmentVariables,
                    format!(
                        "unknown CNI_COMMAND {s:?}: set CNI_COMMAND to one of {}",
                        valid.join(", ")
                    ),
                )
            })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The `CNI_*` variables this command cannot do without.
    pub fn required_env(&self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID"],
            Command::Version | Command::Status | Command::Gc => &[],
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    /// `None` when `CNI_COMMAND` is unset or empty.
    pub command: Option<Command>,
    pub container_id: String,
    /// May be empty (containerd's second DEL sends an empty CNI_NETNS).
    pub netns: String,
    pub ifname: String,
    /// Parsed from CNI_ARGS "K=V;K2=V2" (IgnoreUnknown=1 etc. included), in order.
    pub args: Vec<(String, String)>,
    pub path: String,
}

/// Parses `CNI_ARGS` (`K=V;K2=V2`). Empty elements (e.g. a trailing `;`) are skipped; an element
/// without `=` or with an empty key is code 4. The value is everything after the first `=`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for element in s.split(';') {
        if element.is_empty() {
            continue;
        }
        match element.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironmentVariables,
                    format!(
                        "invalid CNI_ARGS element {element:?}: CNI_ARGS must be \
                         KEY=VALUE pairs separated by ';'"
                    ),
                )
                .with_details(format!("CNI_ARGS={s}")))
            }
        }
    }
    Ok(out)
}

fn env_hint(var: &str) -> &'static str {
    match var {
        "CNI_CONTAINERID" => "set CNI_CONTAINERID to the container's ID",
        "CNI_NETNS" => {
            "set CNI_NETNS to the path of the container's network namespace \
             (e.g. /var/run/netns/NAME)"
        }
        "CNI_IFNAME" => {
            "set CNI_IFNAME to the interface name to create in the container (e.g. eth0)"
        }
        _ => "set it",
    }
}

/// The spec's rule for container IDs: alphanumerics plus `_`, `.` and `-`, starting with an
/// alphanumeric.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Linux interface name rules: 1-15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > 15 {
        Some("is longer than 15 characters")
    } else if name == "." || name == ".." {
        Some("must not be \".\" or \"..\"")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    }
}

impl CniEnv {
    /// Reads CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH via `get`.
    ///
    /// An unset or empty `CNI_COMMAND` leaves `command` at `None`; an unknown one is code 4, as
    /// is a malformed `CNI_ARGS`. Other variables default to empty.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let command = match get("CNI_COMMAND") {
            Some(c) if !c.is_empty() => Some(Command::parse(&c)?),
            _ => None,
        };
        let args = match get("CNI_ARGS") {
            Some(a) => parse_cni_args(&a)?,
            None => Vec::new(),
        };
        Ok(CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
            path: get("CNI_PATH").unwrap_or_default(),
        })
    }

    /// The command, or code 4 telling the caller to set `CNI_COMMAND`.
    pub fn require_command(&self) -> Result<Command, CniError> {
        self.command.ok_or_else(|| {
            let valid: Vec<&str> = Command::ALL.iter().map(Command::as_str).collect();
            CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                format!(
                    "CNI_COMMAND is not set: set CNI_COMMAND to one of {}",
                    valid.join(", ")
                ),
            )
        })
    }

    /// Exact key lookup in `args`; the first match wins.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `K8S_POD_NAMESPACE` from CNI_ARGS.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.arg("K8S_POD_NAMESPACE")
    }

    /// `K8S_POD_NAME` from CNI_ARGS.
    pub fn pod_name(&self) -> Option<&str> {
        self.arg("K8S_POD_NAME")
    }

    /// `K8S_POD_INFRA_CONTAINER_ID` from CNI_ARGS.
    pub fn pod_infra_container_id(&self) -> Option<&str> {
        self.arg("K8S_POD_INFRA_CONTAINER_ID")
    }

    /// Validates what the command needs: ADD and CHECK need container id, netns, ifname;
    /// DEL needs container id only (empty netns is fine); VERSION/STATUS/GC need nothing.
    /// Error code 4 (invalid environment variables) naming the missing variable(s) and what to
    /// set. A container ID or interface name that is present but malformed is also code 4.
    pub fn validate_for(&self, cmd: Command) -> Result<(), CniError> {
        let value = |var: &str| -> &str {
            match var {
                "CNI_CONTAINERID" => &self.container_id,
                "CNI_NETNS" => &self.netns,
                "CNI_IFNAME" => &self.ifname,
                _ => "",
            }
        };
        let required = cmd.required_env();
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|v| value(v).is_empty())
            .collect();
        if !missing.is_empty() {
            let hints: Vec<String> = missing
                .iter()
                .map(|v| format!("{v} is not set: {}", env_hint(v)))
                .collect();
            return Err(CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                format!(
                    "{} needs {}; {}",
                    cmd.as_str(),
                    required.join(", "),
                    hints.join("; ")
                ),
            ));
        }
        if required.contains(&"CNI_CONTAINERID") && !valid_container_id(&self.container_id) {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                "invalid characters in CNI_CONTAINERID: it must start with a letter or digit \
                 and contain only letters, digits, '_', '.' and '-'",
            )
            .with_details(self.container_id.clone()));
        }
        if required.contains(&"CNI_IFNAME") {
            if let Some(problem) = interface_name_problem(&self.ifname) {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironmentVariables,
                    format!("invalid CNI_IFNAME {:?}: the name {problem}", self.ifname),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Network configuration
// ---------------------------------------------------------------------------------------------

/// Network configuration (a single plugin config; for a conflist the runtime passes each plugin
/// its own config with cniVersion and name injected).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Where the agent's API socket is (our own key); `None` -> caller uses
    /// [`DEFAULT_AGENT_SOCKET`] (see [`NetConf::agent_socket_path`]).
    #[serde(
        default,
        rename = "agentSocket",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_socket: Option<String>,
    #[serde(default, rename = "mtu", skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(
        default,
        rename = "runtimeConfig",
        skip_serializing_if = "RuntimeConfig::is_empty"
    )]
    pub runtime_config: RuntimeConfig,
    #[serde(
        default,
        rename = "prevResult",
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// For GC: the attachments the runtime still considers valid (cni.dev/valid-attachments)
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// everything else, kept
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Smallest MTU accepted in a network configuration (the IPv4 minimum).
pub const MIN_MTU: u32 = 68;
/// Largest MTU accepted in a network configuration.
pub const MAX_MTU: u32 = 65535;

fn invalid_config(msg: impl fmt::Display) -> CniError {
    CniError::new(
        ErrorCode::InvalidNetworkConfig,
        format!("invalid network configuration: {msg}"),
    )
}

/// Removes `key` from `map` and deserializes it; absent or `null` is `None`. A value of the wrong
/// shape is code 7 naming the field.
fn take_field<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<T>, CniError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| invalid_config(format_args!("field {key:?}: {e}"))),
    }
}

fn required_string(map: &mut Map<String, Value>, key: &str) -> Result<String, CniError> {
    match take_field::<String>(map, key)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(invalid_config(format_args!(
            "field {key:?} must not be empty"
        ))),
        None => Err(invalid_config(format_args!("field {key:?} is missing"))),
    }
}

impl NetConf {
    /// Parses stdin bytes. Malformed JSON -> code 6 (decoding failure) with serde's message incl.
    /// line/column. cniVersion missing or not in SUPPORTED_VERSIONS -> code 1 (incompatible CNI
    /// version) whose message lists the supported versions. An empty or missing name or type,
    /// or any known field of the wrong shape (message names the field, e.g.
    /// `runtimeConfig.portMappings[0].hostPort`) -> code 7 (invalid network config).
    /// Unknown top-level keys are kept in `extra`.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!("failed to decode the network configuration: {e}"),
            )
        })?;
        let Value::Object(mut map) = value else {
            return Err(CniError::new(
                ErrorCode::DecodingFailure,
                "failed to decode the network configuration: expected a JSON object",
            ));
        };

        let cni_version = match map.remove("cniVersion") {
            Some(Value::String(v)) if is_supported_version(&v) => v,
            Some(Value::String(v)) if v.is_empty() => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleCniVersion,
                    format!(
                        "the network configuration has an empty cniVersion: set it to one of {}",
                        supported_list()
                    ),
                ))
            }
            Some(Value::String(v)) => return Err(incompatible_version(&v)),
            None | Some(Value::Null) => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleCniVersion,
                    format!(
                        "the network configuration has no cniVersion: set it to one of {}",
                        supported_list()
                    ),
                ))
            }
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleCniVersion,
                    format!(
                        "cniVersion must be a string, got {other}: set it to one of {}",
                        supported_list()
                    ),
                ))
            }
        };

        let name = required_string(&mut map, "name")?;
        let plugin_type = required_string(&mut map, "type")?;
        let agent_socket = take_field::<String>(&mut map, "agentSocket")?;
        let mtu = take_field::<u32>(&mut map, "mtu")?;
        if let Some(m) = mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return Err(invalid_config(format_args!(
                    "field \"mtu\" must be between {MIN_MTU} and {MAX_MTU}, got {m}"
                )));
            }
        }
        let runtime_config = match map.remove("runtimeConfig") {
            None => RuntimeConfig::default(),
            Some(v) => RuntimeConfig::from_value(&v).map_err(invalid_config)?,
        };
        let prev_result = take_field::<Value>(&mut map, "prevResult")?;
        let valid_attachments =
            take_field::<Vec<Attachment>>(&mut map, "cni.dev/valid-attachments")?;

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            mtu,
            runtime_config,
            prev_result,
            valid_attachments,
            extra: map,
        })
    }

    /// The `cniVersion` of a configuration, if it can be read at all, whether or not it is
    /// supported. Useful for choosing the version to write an error in when parsing failed.
    pub fn peek_cni_version(bytes: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        v.get("cniVersion")?.as_str().map(str::to_string)
    }

    /// `agentSocket`, or [`DEFAULT_AGENT_SOCKET`] when unset or empty.
    pub fn agent_socket_path(&self) -> &str {
        match self.agent_socket.as_deref() {
            Some(s) if !s.is_empty() => s,
            _ => DEFAULT_AGENT_SOCKET,
        }
    }

    /// The previous result (chained plugins, CHECK) decoded; `None` when absent.
    pub fn prev_add_result(&self) -> Result<Option<AddResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(AddResult::from_json)
            .transpose()
    }
}

/// A network configuration list (`*.conflist`), as a runtime reads it from its
/// configuration directory: each plugin gets the list's cniVersion and name injected and is
/// parsed as a [`NetConf`], with the same errors.
#[derive(Debug, Clone)]
pub struct NetConfList {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<NetConf>,
}

impl NetConfList {
    pub fn parse(bytes: &[u8]) -> Result<NetConfList, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!("failed to decode the network configuration list: {e}"),
            )
        })?;
        let Value::Object(mut map) = value else {
            return Err(CniError::new(
                ErrorCode::DecodingFailure,
                "failed to decode the network configuration list: expected a JSON object",
            ));
        };
        let cni_version = required_string(&mut map, "cniVersion")?;
        if !is_supported_version(&cni_version) {
            return Err(incompatible_version(&cni_version));
        }
        let name = required_string(&mut map, "name")?;
        let plugins = take_field::<Vec<Map<String, Value>>>(&mut map, "plugins")?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid_config("field \"plugins\" must list at least one plugin"))?;
        let plugins = plugins
            .into_iter()
            .map(|mut p| {
                p.insert("cniVersion".into(), Value::String(cni_version.clone()));
                p.insert("name".into(), Value::String(name.clone()));
                NetConf::parse(&serde_json::to_vec(&Value::Object(p)).unwrap_or_default())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetConfList {
            cni_version,
            name,
            plugins,
        })
    }
}

/// runtimeConfig: keys are matched WITHOUT regard to case, at every level (containerd sends
/// `"portMappings":[{"HostPort":80,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]`, podman
/// sends `"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]`). Unknown
/// runtimeConfig keys are ignored. `bandwidth` keys are canonicalised to `ingressRate`,
/// `ingressBurst`, `egressRate`, `egressBurst`; other keys in it are kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Value>,
}

/// One `runtimeConfig.portMappings` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// Lower-cased; "tcp" when absent or empty. One of tcp, udp, sctp.
    pub protocol: String,
    /// `None` when absent or "".
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// Looks a key up in a JSON object without regard to case.
fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn port_at(map: &Map<String, Value>, key: &str, path: &str) -> Result<u16, String> {
    let field = format!("{path}.{key}");
    let v = get_ci(map, key).ok_or_else(|| format!("{field} is missing"))?;
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| format!("{field} must be an integer port between 1 and 65535, got {v}"))
}

impl PortMapping {
    /// Decodes one port mapping; `path` (e.g. `runtimeConfig.portMappings[0]`) prefixes error
    /// messages.
    fn from_value_at(v: &Value, path: &str) -> Result<PortMapping, String> {
        let Value::Object(map) = v else {
            return Err(format!("{path} must be a JSON object, got {v}"));
        };
        let host_port = port_at(map, "hostPort", path)?;
        let container_port = port_at(map, "containerPort", path)?;
        let protocol = match get_ci(map, "protocol") {
            None | Some(Value::Null) => "tcp".to_string(),
            Some(Value::String(s)) if s.is_empty() => "tcp".to_string(),
            Some(Value::String(s)) => {
                let p = s.to_ascii_lowercase();
                if !matches!(p.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(format!(
                        "{path}.protocol must be tcp, udp or sctp, got {s:?}"
                    ));
                }
                p
            }
            Some(other) => return Err(format!("{path}.protocol must be a string, got {other}")),
        };
        let host_ip = match get_ci(map, "hostIP") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                if s.parse::<IpAddr>().is_err() {
                    return Err(format!("{path}.hostIP must be an IP address, got {s:?}"));
                }
                Some(s.clone())
            }
            Some(other) => return Err(format!("{path}.hostIP must be a string, got {other}")),
        };
        Ok(PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        })
    }
}

impl<'de> Deserialize<'de> for PortMapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        PortMapping::from_value_at(&v, "portMapping").map_err(D::Error::custom)
    }
}

const BANDWIDTH_KEYS: &[&str] = &["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

impl RuntimeConfig {
    /// True when nothing was configured.
    pub fn is_empty(&self) -> bool {
        self.port_mappings.is_empty() && self.bandwidth.is_none()
    }

    /// Decodes `runtimeConfig` from JSON, matching keys without regard to case. `null` is the
    /// default. The error names the offending field, e.g.
    /// `runtimeConfig.portMappings[0].hostPort must be an integer port between 1 and 65535, got 0`.
    pub fn from_value(v: &Value) -> Result<RuntimeConfig, String> {
        let map = match v {
            Value::Null => return Ok(RuntimeConfig::default()),
            Value::Object(m) => m,
            other => return Err(format!("runtimeConfig must be a JSON object, got {other}")),
        };
        let port_mappings = match get_ci(map, "portMappings") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    PortMapping::from_value_at(item, &format!("runtimeConfig.portMappings[{i}]"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(format!(
                    "runtimeConfig.portMappings must be an array, got {other}"
                ))
            }
        };
        let bandwidth = match get_ci(map, "bandwidth") {
            None | Some(Value::Null) => None,
            Some(Value::Object(bw)) => {
                let canon: Map<String, Value> = bw
                    .iter()
                    .map(|(k, v)| {
                        let key = BANDWIDTH_KEYS
                            .iter()
                            .find(|c| c.eq_ignore_ascii_case(k))
                            .map_or_else(|| k.clone(), |c| (*c).to_string());
                        (key, v.clone())
                    })
                    .collect();
                Some(Value::Object(canon))
            }
            Some(other) => {
                return Err(format!(
                    "runtimeConfig.bandwidth must be a JSON object, got {other}"
                ))
            }
        };
        Ok(RuntimeConfig {
            port_mappings,
            bandwidth,
        })
    }
}

impl<'de> Deserialize<'de> for RuntimeConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        RuntimeConfig::from_value(&v).map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// The result of ADD, version-neutral; rendered per requested version.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the container; `None` for host-side interfaces.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `AddResult::interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

fn decode_error(msg: impl fmt::Display) -> CniError {
    CniError::new(
        ErrorCode::DecodingFailure,
        format!("failed to decode the CNI result: {msg}"),
    )
}

/// Inserts `items` under `key` unless empty.
fn put_list<T: Serialize>(m: &mut Map<String, Value>, key: &str, items: &[T]) {
    if !items.is_empty() {
        m.insert(key.to_string(), json!(items));
    }
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        put_list(&mut m, "nameservers", &self.nameservers);
        if let Some(d) = self.domain.as_deref().filter(|d| !d.is_empty()) {
            m.insert("domain".into(), Value::from(d));
        }
        put_list(&mut m, "search", &self.search);
        put_list(&mut m, "options", &self.options);
        Value::Object(m)
    }

    fn from_json(v: Option<&Value>) -> Result<Dns, CniError> {
        let map = match v {
            None | Some(Value::Null) => return Ok(Dns::default()),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(decode_error(format_args!(
                    "dns must be an object, got {other}"
                )))
            }
        };
        let list = |key: &str| -> Result<Vec<String>, CniError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|e| decode_error(format_args!("dns.{key}: {e}"))),
            }
        };
        let domain = opt_str(map, "domain", "dns")?.filter(|d| !d.is_empty());
        Ok(Dns {
            nameservers: list("nameservers")?,
            domain,
            search: list("search")?,
            options: list("options")?,
        })
    }
}

fn opt_str(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, CniError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(decode_error(format_args!(
            "{path}.{key} must be a string, got {other}"
        ))),
    }
}

fn parse_opt<T: std::str::FromStr>(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<T>, CniError>
where
    T::Err: fmt::Display,
{
    match opt_str(map, key, path)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| decode_error(format_args!("{path}.{key} {s:?}: {e}"))),
    }
}

fn parse_req<T: std::str::FromStr>(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<T, CniError>
where
    T::Err: fmt::Display,
{
    parse_opt(map, key, path)?.ok_or_else(|| decode_error(format_args!("{path}.{key} is missing")))
}

/// The objects of the array under `key`; missing or `null` is empty.
fn objects<'a>(
    root: &'a Map<String, Value>,
    key: &str,
) -> Result<Vec<&'a Map<String, Value>>, CniError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_object()
                    .ok_or_else(|| decode_error(format_args!("{key}[{i}] must be an object")))
            })
            .collect(),
        Some(other) => Err(decode_error(format_args!(
            "{key} must be an array, got {other}"
        ))),
    }
}

impl AddResult {
    /// Renders for `version`:
    /// - 0.3.0/0.3.1/0.4.0: `{"cniVersion", "interfaces":[{name,mac,sandbox?}],
    ///   "ips":[{"version":"4"|"6","address":"10.0.0.5/32","gateway":..,"interface":0}],
    ///   "routes":[{"dst","gw"?}], "dns":{}}`
    /// - 1.0.0/1.1.0: same but ips entries have NO "version" field.
    ///
    /// Empty/None optional fields are omitted (no nulls); empty `interfaces`, `ips` and `routes`
    /// lists are omitted too, while `dns` is always present (possibly `{}`).
    /// Unsupported version -> code 1.
    pub fn render(&self, version: &str) -> Result<Value, CniError> {
        if !is_supported_version(version) {
            return Err(incompatible_version(version));
        }
        let with_ip_version = !version.starts_with("1.");

        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), Value::from(i.name.as_str()));
                if !i.mac.is_empty() {
                    m.insert("mac".into(), Value::from(i.mac.as_str()));
                }
                if let Some(s) = i.sandbox.as_deref().filter(|s| !s.is_empty()) {
                    m.insert("sandbox".into(), Value::from(s));
                }
                Value::Object(m)
            })
            .collect();

        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if with_ip_version {
                    let v = match ip.address {
                        IpNet::V4(_) => "4",
                        IpNet::V6(_) => "6",
                    };
                    m.insert("version".into(), Value::from(v));
                }
                m.insert("address".into(), Value::from(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), Value::from(gw.to_string()));
                }
                if let Some(idx) = ip.interface {
                    m.insert("interface".into(), Value::from(idx));
                }
                Value::Object(m)
            })
            .collect();

        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), Value::from(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    m.insert("gw".into(), Value::from(gw.to_string()));
                }
                Value::Object(m)
            })
            .collect();

        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::from(version));
        put_list(&mut out, "interfaces", &interfaces);
        put_list(&mut out, "ips", &ips);
        put_list(&mut out, "routes", &routes);
        out.insert("dns".into(), self.dns.to_json());
        Ok(Value::Object(out))
    }

    /// Parses a prevResult (any supported version) back, for CHECK. Tolerant of missing optional
    /// fields and of fields it does not know (e.g. `ips[].version`, 1.1.0's route `mtu`).
    /// A value of the wrong shape (not an object, an unparsable address, ...) is code 6.
    pub fn from_json(v: &Value) -> Result<AddResult, CniError> {
        let root = v
            .as_object()
            .ok_or_else(|| decode_error("expected a JSON object"))?;

        let interfaces = objects(root, "interfaces")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let path = format!("interfaces[{i}]");
                Ok(Interface {
                    name: opt_str(m, "name", &path)?.unwrap_or_default(),
                    mac: opt_str(m, "mac", &path)?.unwrap_or_default(),
                    sandbox: opt_str(m, "sandbox", &path)?.filter(|s| !s.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let ips = objects(root, "ips")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let path = format!("ips[{i}]");
                let interface = match m.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(n) => Some(
                        n.as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| {
                                decode_error(format_args!(
                                    "{path}.interface must be a non-negative integer, got {n}"
                                ))
                            })?,
                    ),
                };
                Ok(IpConfig {
                    address: parse_req(m, "address", &path)?,
                    gateway: parse_opt(m, "gateway", &path)?,
                    interface,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let routes = objects(root, "routes")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let path = format!("routes[{i}]");
                Ok(Route {
                    dst: parse_req(m, "dst", &path)?,
                    gw: parse_opt(m, "gw", &path)?,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        Ok(AddResult {
            interfaces,
            ips,
            routes,
            dns: Dns::from_json(root.get("dns"))?,
        })
    }
}

/// VERSION answer: `{"cniVersion": <version asked or "1.1.0">, "supportedVersions": [...]}`.
/// An asked version that is not supported is answered with [`LATEST_VERSION`] (the list tells the
/// runtime what it can use instead).
pub fn version_result(asked: Option<&str>) -> Value {
    let version = asked
        .filter(|v| is_supported_version(v))
        .unwrap_or(LATEST_VERSION);
    json!({
        "cniVersion": version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// STATUS needs no output on success; this helper exists so callers can name the failure codes
/// the spec allows for STATUS (50: plugin not available, 51: limited connectivity).
pub fn status_unavailable(reason: impl fmt::Display) -> CniError {
    CniError::new(
        ErrorCode::PluginNotAvailable,
        format!(
            "the cilium CNI plugin is not available: {reason}: is the cilium agent running? \
             start it with `cilium agent` or `cilium local up`"
        ),
    )
}

/// Serializes a [`CniError`] as the spec's error object at [`LATEST_VERSION`]; the versioned
/// form is [`CniError::to_json`].
impl Serialize for CniError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json(LATEST_VERSION).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let owned: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(move |k| {
            owned
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    }

    fn no_nulls(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Array(a) => a.iter().all(no_nulls),
            Value::Object(m) => m.values().all(no_nulls),
            _ => true,
        }
    }

    /// A config as a runtime hands it to one plugin of a conflist: cniVersion and name injected,
    /// plugin-specific keys alongside.
    fn conflist_injected(version: &str) -> String {
        format!(
            r#"{{
                "cniVersion": "{version}",
                "name": "cilium",
                "type": "cilium-cni",
                "enable-debug": true,
                "log-file": "/var/run/cilium/cilium-cni.log",
                "agentSocket": "/run/cilium/agent.sock",
                "mtu": 1450,
                "capabilities": {{"portMappings": true, "bandwidth": true}},
                "runtimeConfig": {{
                    "portMappings": [{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}],
                    "bandwidth": {{"ingressRate": 1000000, "ingressBurst": 2000}}
                }}
            }}"#
        )
    }

    fn check_common(c: &NetConf, version: &str) {
        assert_eq!(c.cni_version, version);
        assert_eq!(c.name, "cilium");
        assert_eq!(c.plugin_type, "cilium-cni");
        assert_eq!(c.agent_socket.as_deref(), Some("/run/cilium/agent.sock"));
        assert_eq!(c.agent_socket_path(), "/run/cilium/agent.sock");
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(
            c.runtime_config.port_mappings,
            vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: None
            }]
        );
        assert_eq!(
            c.runtime_config.bandwidth,
            Some(json!({"ingressRate": 1000000, "ingressBurst": 2000}))
        );
        assert_eq!(c.extra.get("enable-debug"), Some(&json!(true)));
        assert_eq!(
            c.extra.get("log-file"),
            Some(&json!("/var/run/cilium/cilium-cni.log"))
        );
        assert!(c.extra.contains_key("capabilities"));
        for known in [
            "cniVersion",
            "name",
            "type",
            "mtu",
            "runtimeConfig",
            "agentSocket",
        ] {
            assert!(!c.extra.contains_key(known), "{known} leaked into extra");
        }
    }

    #[test]
    fn parse_config_0_3_1() {
        let c = NetConf::parse(conflist_injected("0.3.1").as_bytes()).expect("parse");
        check_common(&c, "0.3.1");
        assert!(c.prev_result.is_none());
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn parse_config_0_4_0() {
        let c = NetConf::parse(conflist_injected("0.4.0").as_bytes()).expect("parse");
        check_common(&c, "0.4.0");
    }

    #[test]
    fn parse_config_1_0_0_with_prev_result() {
        let mut v: Value = serde_json::from_str(&conflist_injected("1.0.0")).expect("json");
        v["prevResult"] = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:00:00:05", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0}],
            "dns": {}
        });
        let c = NetConf::parse(v.to_string().as_bytes()).expect("parse");
        check_common(&c, "1.0.0");
        let prev = c.prev_add_result().expect("decode").expect("present");
        assert_eq!(prev.ips[0].address.to_string(), "10.0.0.5/24");
        assert_eq!(prev.interfaces[0].name, "eth0");
    }

    #[test]
    fn parse_config_1_1_0_with_valid_attachments() {
        let mut v: Value = serde_json::from_str(&conflist_injected("1.1.0")).expect("json");
        v["cni.dev/valid-attachments"] = json!([{"containerID": "abc123", "ifname": "eth0"}, {"containerID": "def", "ifname": "net1"}]);
        let c = NetConf::parse(v.to_string().as_bytes()).expect("parse");
        check_common(&c, "1.1.0");
        assert_eq!(
            c.valid_attachments,
            Some(vec![
                Attachment {
                    container_id: "abc123".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "def".into(),
                    ifname: "net1".into()
                },
            ])
        );
    }

    #[test]
    fn parse_minimal_config_uses_defaults() {
        let c = NetConf::parse(br#"{"cniVersion":"0.3.0","name":"n","type":"cilium-cni"}"#)
            .expect("parse");
        assert_eq!(c.agent_socket, None);
        assert_eq!(c.agent_socket_path(), DEFAULT_AGENT_SOCKET);
        assert_eq!(c.mtu, None);
        assert!(c.runtime_config.is_empty());
        assert!(c.extra.is_empty());
    }

    #[test]
    fn unknown_or_missing_version_is_code_1_listing_supported() {
        let cases = [
            r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#,
            r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#,
            r#"{"name":"n","type":"t"}"#,
            r#"{"cniVersion":"","name":"n","type":"t"}"#,
            r#"{"cniVersion":1,"name":"n","type":"t"}"#,
        ];
        for case in cases {
            let e = NetConf::parse(case.as_bytes()).expect_err(case);
            assert_eq!(e.code, ErrorCode::IncompatibleCniVersion, "{case}");
            assert_eq!(e.code.code(), 1);
            for v in SUPPORTED_VERSIONS {
                assert!(e.msg.contains(v), "{case}: {} lacks {v}", e.msg);
            }
        }
        let e =
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#).expect_err("9.9.9");
        assert!(e.msg.contains("9.9.9"));
    }

    #[test]
    fn malformed_json_is_code_6_with_position() {
        let e = NetConf::parse(b"{\"cniVersion\": \"1.0.0\",\n \"name\": }").expect_err("bad");
        assert_eq!(e.code.code(), 6);
        assert!(e.msg.contains("line 2 column"), "{}", e.msg);

        let e = NetConf::parse(b"[1,2]").expect_err("array");
        assert_eq!(e.code, ErrorCode::DecodingFailure);
        let e = NetConf::parse(b"").expect_err("empty");
        assert_eq!(e.code, ErrorCode::DecodingFailure);
    }

    #[test]
    fn empty_or_missing_name_and_type_are_code_7() {
        for (case, field) in [
            (r#"{"cniVersion":"1.0.0","name":"n","type":""}"#, "type"),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "type"),
            (r#"{"cniVersion":"1.0.0","name":"","type":"t"}"#, "name"),
            (r#"{"cniVersion":"1.0.0","name":5,"type":"t"}"#, "name"),
        ] {
            let e = NetConf::parse(case.as_bytes()).expect_err(case);
            assert_eq!(e.code.code(), 7, "{case}");
            assert!(e.msg.contains(field), "{case}: {}", e.msg);
        }
    }

    #[test]
    fn wrongly_typed_known_fields_are_code_7_naming_the_field() {
        for (case, field) in [
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":0}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","agentSocket":3}"#,
                "agentSocket",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                "cni.dev/valid-attachments",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":[]}"#,
                "runtimeConfig",
            ),
        ] {
            let e = NetConf::parse(case.as_bytes()).expect_err(case);
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{case}");
            assert!(e.msg.contains(field), "{case}: {}", e.msg);
        }
    }

    fn runtime_config_of(rc: &str) -> Result<NetConf, CniError> {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{rc}}}"#)
                .as_bytes(),
        )
    }

    #[test]
    fn runtime_config_keys_are_case_insensitive() {
        let containerd = runtime_config_of(
            r#"{"PortMappings":[{"HostPort":80,"ContainerPort":8080,"Protocol":"tcp","HostIP":""},
                                {"HostPort":53,"ContainerPort":5353,"Protocol":"UDP","HostIP":"127.0.0.1"}]}"#,
        )
        .expect("containerd");
        let podman = runtime_config_of(
            r#"{"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"},
                                {"hostPort":53,"containerPort":5353,"protocol":"udp","hostIP":"127.0.0.1"}]}"#,
        )
        .expect("podman");
        let shouting = runtime_config_of(
            r#"{"PORTMAPPINGS":[{"HOSTPORT":80,"CONTAINERPORT":8080},
                                {"hostport":53,"containerport":5353,"PROTOCOL":"Udp","hostip":"127.0.0.1"}]}"#,
        )
        .expect("upper");
        let expected = vec![
            PortMapping {
                host_port: 80,
                container_port: 8080,
                protocol: "tcp".into(),
                host_ip: None,
            },
            PortMapping {
                host_port: 53,
                container_port: 5353,
                protocol: "udp".into(),
                host_ip: Some("127.0.0.1".into()),
            },
        ];
        assert_eq!(containerd.runtime_config.port_mappings, expected);
        assert_eq!(podman.runtime_config, containerd.runtime_config);
        assert_eq!(shouting.runtime_config, containerd.runtime_config);
    }

    #[test]
    fn protocol_defaults_to_tcp_and_empty_host_ip_is_none() {
        let c = runtime_config_of(
            r#"{"portMappings":[{"hostPort":1,"containerPort":2},
                                {"hostPort":3,"containerPort":4,"protocol":"","HostIP":""},
                                {"hostPort":5,"containerPort":6,"protocol":null,"hostIP":null}]}"#,
        )
        .expect("parse");
        for pm in &c.runtime_config.port_mappings {
            assert_eq!(pm.protocol, "tcp");
            assert_eq!(pm.host_ip, None);
        }
        assert_eq!(c.runtime_config.port_mappings.len(), 3);
    }

    #[test]
    fn bad_ports_are_code_7_naming_the_field() {
        for (pm, field) in [
            (
                r#"{"hostPort":0,"containerPort":80}"#,
                "portMappings[0].hostPort",
            ),
            (
                r#"{"hostPort":70000,"containerPort":80}"#,
                "portMappings[0].hostPort",
            ),
            (
                r#"{"hostPort":"80","containerPort":80}"#,
                "portMappings[0].hostPort",
            ),
            (
                r#"{"hostPort":-1,"containerPort":80}"#,
                "portMappings[0].hostPort",
            ),
            (
                r#"{"hostPort":80.5,"containerPort":80}"#,
                "portMappings[0].hostPort",
            ),
            (r#"{"hostPort":80}"#, "portMappings[0].containerPort"),
            (
                r#"{"HostPort":80,"ContainerPort":0}"#,
                "portMappings[0].containerPort",
            ),
            (
                r#"{"hostPort":80,"containerPort":80,"protocol":"icmp"}"#,
                "portMappings[0].protocol",
            ),
            (
                r#"{"hostPort":80,"containerPort":80,"hostIP":"nope"}"#,
                "portMappings[0].hostIP",
            ),
        ] {
            let e = runtime_config_of(&format!(r#"{{"portMappings":[{pm}]}}"#)).expect_err(pm);
            assert_eq!(e.code, ErrorCode::InvalidNetworkConfig, "{pm}");
            assert!(e.msg.contains(field), "{pm}: {}", e.msg);
            assert!(e.msg.contains("runtimeConfig."), "{pm}: {}", e.msg);
        }
    }

    #[test]
    fn unknown_runtime_config_keys_are_ignored_and_bandwidth_canonicalised() {
        let c = runtime_config_of(
            r#"{"ips":["10.0.0.9"],"mac":"x","Bandwidth":{"IngressRate":10,"EGRESSBURST":20,"custom":1}}"#,
        )
        .expect("parse");
        assert!(c.runtime_config.port_mappings.is_empty());
        assert_eq!(
            c.runtime_config.bandwidth,
            Some(json!({"ingressRate": 10, "egressBurst": 20, "custom": 1}))
        );
    }

    #[test]
    fn serde_deserialize_matches_parse_and_serialize_round_trips() {
        let text = conflist_injected("1.0.0");
        let parsed = NetConf::parse(text.as_bytes()).expect("parse");
        let derived: NetConf = serde_json::from_str(&text).expect("derive");
        assert_eq!(derived.runtime_config, parsed.runtime_config);
        assert_eq!(derived.extra, parsed.extra);

        let out = serde_json::to_value(&parsed).expect("serialize");
        assert!(no_nulls(&out), "{out}");
        assert_eq!(
            out["runtimeConfig"]["portMappings"][0]["hostPort"],
            json!(8080)
        );
        assert_eq!(out["enable-debug"], json!(true));
        let again = NetConf::parse(out.to_string().as_bytes()).expect("reparse");
        assert_eq!(again.runtime_config, parsed.runtime_config);
        assert_eq!(again.extra, parsed.extra);
        assert_eq!(again.mtu, parsed.mtu);
    }

    #[test]
    fn peek_cni_version_reads_unsupported_versions() {
        assert_eq!(
            NetConf::peek_cni_version(br#"{"cniVersion":"0.2.0"}"#).as_deref(),
            Some("0.2.0")
        );
        assert_eq!(NetConf::peek_cni_version(b"nope"), None);
    }

    fn sample_result() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "lxc1234".into(),
                    mac: "ee:ee:ee:ee:ee:01".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:00:00:05".into(),
                    sandbox: Some("/var/run/netns/cni-1".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.0.0.5/32".parse().expect("net"),
                    gateway: Some("10.0.0.1".parse().expect("ip")),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".parse().expect("net"),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().expect("net"),
                    gw: Some("10.0.0.1".parse().expect("ip")),
                },
                Route {
                    dst: "::/0".parse().expect("net"),
                    gw: None,
                },
            ],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: Some("cluster.local".into()),
                search: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    #[test]
    fn render_0_4_0_has_ip_versions() {
        for version in ["0.3.0", "0.3.1", "0.4.0"] {
            let v = sample_result().render(version).expect("render");
            assert_eq!(v["cniVersion"], json!(version));
            assert_eq!(v["ips"][0]["version"], json!("4"));
            assert_eq!(v["ips"][1]["version"], json!("6"));
            assert_eq!(v["ips"][0]["address"], json!("10.0.0.5/32"));
            assert_eq!(v["ips"][0]["gateway"], json!("10.0.0.1"));
            assert_eq!(v["ips"][0]["interface"], json!(1));
            assert!(v["ips"][1].get("gateway").is_none());
            assert!(no_nulls(&v), "{v}");
        }
    }

    #[test]
    fn render_1_x_has_no_ip_version() {
        for version in ["1.0.0", "1.1.0"] {
            let v = sample_result().render(version).expect("render");
            assert_eq!(v["cniVersion"], json!(version));
            for ip in v["ips"].as_array().expect("ips") {
                assert!(ip.get("version").is_none(), "{ip}");
            }
            assert_eq!(v["ips"][0]["gateway"], json!("10.0.0.1"));
            assert_eq!(v["ips"][0]["interface"], json!(1));
            assert_eq!(v["interfaces"][1]["sandbox"], json!("/var/run/netns/cni-1"));
            assert!(v["interfaces"][0].get("sandbox").is_none());
            assert_eq!(
                v["routes"][0],
                json!({"dst": "0.0.0.0/0", "gw": "10.0.0.1"})
            );
            assert_eq!(v["routes"][1], json!({"dst": "::/0"}));
            assert_eq!(v["dns"]["nameservers"], json!(["10.96.0.10"]));
            assert_eq!(v["dns"]["domain"], json!("cluster.local"));
            assert!(no_nulls(&v), "{v}");
        }
    }

    #[test]
    fn render_omits_empty_optional_fields() {
        let r = AddResult {
            interfaces: vec![],
            ips: vec![IpConfig {
                address: "10.1.2.3/16".parse().expect("net"),
                gateway: None,
                interface: None,
            }],
            routes: vec![],
            dns: Dns::default(),
        };
        let v = r.render("1.0.0").expect("render");
        assert_eq!(
            v,
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/16"}], "dns": {}})
        );
    }

    #[test]
    fn render_unsupported_version_is_code_1() {
        let e = sample_result().render("0.2.0").expect_err("0.2.0");
        assert_eq!(e.code.code(), 1);
        assert!(e.msg.contains("1.1.0"));
    }

    #[test]
    fn render_then_from_json_round_trips_every_version() {
        let r = sample_result();
        for version in SUPPORTED_VERSIONS {
            let v = r.render(version).expect("render");
            assert_eq!(AddResult::from_json(&v).expect("decode"), r, "{version}");
        }
        let empty = AddResult {
            interfaces: vec![],
            ips: vec![],
            routes: vec![],
            dns: Dns::default(),
        };
        for version in SUPPORTED_VERSIONS {
            let v = empty.render(version).expect("render");
            assert_eq!(
                AddResult::from_json(&v).expect("decode"),
                empty,
                "{version}"
            );
        }
    }

    #[test]
    fn from_json_is_tolerant_but_rejects_bad_shapes() {
        let r = AddResult::from_json(&json!({"cniVersion": "0.4.0"})).expect("minimal");
        assert!(r.ips.is_empty() && r.interfaces.is_empty() && r.routes.is_empty());
        assert!(r.dns.is_empty());

        // Extra 1.1.0 fields and nulls are tolerated.
        let r = AddResult::from_json(&json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mtu": 1500, "socketPath": "/x"}],
            "ips": [{"address": "10.0.0.5/24", "gateway": null}],
            "routes": [{"dst": "0.0.0.0/0", "mtu": 1400, "priority": 10}],
            "dns": null
        }))
        .expect("tolerant");
        assert_eq!(r.interfaces[0].mac, "");
        assert_eq!(r.ips[0].gateway, None);
        assert_eq!(r.routes[0].gw, None);

        for bad in [
            json!("nope"),
            json!({"ips": [{"address": "10.0.0.500/24"}]}),
            json!({"ips": [{"gateway": "10.0.0.1"}]}),
            json!({"ips": {"address": "10.0.0.5/24"}}),
            json!({"ips": [{"address": "10.0.0.5/24", "interface": -1}]}),
            json!({"routes": [{"dst": "nope"}]}),
            json!({"dns": {"nameservers": "8.8.8.8"}}),
        ] {
            let e = AddResult::from_json(&bad).expect_err(&bad.to_string());
            assert_eq!(e.code, ErrorCode::DecodingFailure, "{bad}");
        }
    }

    #[test]
    fn cni_args_are_parsed_into_pod_identity() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc",
            ),
        ])
        .expect("env");
        assert_eq!(e.command, Some(Command::Add));
        assert_eq!(e.pod_namespace(), Some("default"));
        assert_eq!(e.pod_name(), Some("web-0"));
        assert_eq!(e.pod_infra_container_id(), Some("abc"));
        assert_eq!(e.arg("IgnoreUnknown"), Some("1"));
        assert_eq!(e.arg("ignoreunknown"), None);
        assert_eq!(e.args.len(), 4);
        assert_eq!(e.path, "/opt/cni/bin");
        assert_eq!(e.netns, "/var/run/netns/cni-1");
        assert!(e.validate_for(Command::Add).is_ok());
    }

    #[test]
    fn cni_args_edge_cases() {
        assert_eq!(
            parse_cni_args("A=1;;B=x=y;").expect("ok"),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(parse_cni_args("").expect("empty").is_empty());
        for bad in ["IgnoreUnknown", "A=1;B", "=v"] {
            let e = parse_cni_args(bad).expect_err(bad);
            assert_eq!(e.code.code(), 4, "{bad}");
            assert!(e.msg.contains("CNI_ARGS"));
        }
    }

    #[test]
    fn malformed_cni_args_in_env_is_code_4() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME"),
        ])
        .expect_err("malformed");
        assert_eq!(e.code, ErrorCode::InvalidEnvironmentVariables);
        assert!(e.msg.contains("K8S_POD_NAME"), "{}", e.msg);
    }

    #[test]
    fn add_without_netns_is_code_4_naming_cni_netns() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("env");
        let err = e.validate_for(Command::Add).expect_err("no netns");
        assert_eq!(err.code.code(), 4);
        assert!(err.msg.contains("CNI_NETNS"), "{}", err.msg);
        assert!(err.msg.contains("set CNI_NETNS"), "{}", err.msg);
        assert!(!err.msg.contains("CNI_IFNAME is not set"), "{}", err.msg);

        let err = e.validate_for(Command::Check).expect_err("CHECK too");
        assert!(err.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn del_with_empty_netns_is_ok_but_needs_container_id() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
        ])
        .expect("env");
        assert_eq!(e.netns, "");
        assert!(e.validate_for(Command::Del).is_ok());

        let e = env(&[("CNI_COMMAND", "DEL")]).expect("env");
        let err = e.validate_for(Command::Del).expect_err("no id");
        assert_eq!(err.code.code(), 4);
        assert!(err.msg.contains("CNI_CONTAINERID"));
    }

    #[test]
    fn version_status_gc_need_nothing() {
        let e = CniEnv::default();
        for c in [Command::Version, Command::Status, Command::Gc] {
            assert!(e.validate_for(c).is_ok(), "{c}");
        }
        let err = e.validate_for(Command::Add).expect_err("nothing set");
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert!(err.msg.contains(var), "{}", err.msg);
        }
    }

    #[test]
    fn malformed_container_id_or_ifname_is_code_4() {
        let base = [("CNI_NETNS", "/var/run/netns/x"), ("CNI_IFNAME", "eth0")];
        let mut vars = base.to_vec();
        vars.push(("CNI_CONTAINERID", "-bad/id"));
        let err = env(&vars)
            .expect("env")
            .validate_for(Command::Add)
            .expect_err("bad id");
        assert_eq!(err.code.code(), 4);
        assert!(err.msg.contains("CNI_CONTAINERID"));

        let e = env(&[
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "averyveryverylongname"),
        ])
        .expect("env");
        let err = e.validate_for(Command::Add).expect_err("bad ifname");
        assert_eq!(err.code.code(), 4);
        assert!(err.msg.contains("CNI_IFNAME"));
        // DEL does not need an interface name, so a bad one is not its problem.
        assert!(e.validate_for(Command::Del).is_ok());
    }

    #[test]
    fn unknown_command_is_code_4() {
        let err = env(&[("CNI_COMMAND", "FROB")]).expect_err("unknown");
        assert_eq!(err.code, ErrorCode::InvalidEnvironmentVariables);
        assert!(
            err.msg.contains("FROB") && err.msg.contains("ADD"),
            "{}",
            err.msg
        );
        assert_eq!(Command::parse("add").map_err(|e| e.code.code()), Err(4));

        let e = env(&[]).expect("unset command is not an error yet");
        assert_eq!(e.command, None);
        assert_eq!(e.require_command().map_err(|e| e.code.code()), Err(4));
    }

    #[test]
    fn commands_round_trip_through_strings() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.as_str()), Ok(c));
        }
        assert_eq!(Command::Gc.as_str(), "GC");
        assert_eq!(Command::Status.to_string(), "STATUS");
    }

    #[test]
    fn error_json_has_spec_shape() {
        let e = CniError::new(ErrorCode::TryAgainLater, "busy").with_details("lock held");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "lock held"})
        );
        let e = CniError::new(ErrorCode::IoFailure, "disk");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 5, "msg": "disk"})
        );
        assert_eq!(e.to_string(), "disk");
        assert_eq!(CniError::from_json(&e.to_json("0.4.0")), Some(e.clone()));
        assert_eq!(
            serde_json::to_value(&e).expect("ser")["cniVersion"],
            json!(LATEST_VERSION)
        );
    }

    #[test]
    fn error_codes_have_spec_numbers() {
        let table = [
            (ErrorCode::IncompatibleCniVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironmentVariables, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::DecodingFailure, 6),
            (ErrorCode::InvalidNetworkConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::PluginNotAvailable, 50),
            (ErrorCode::LimitedConnectivity, 51),
            (ErrorCode::AGENT_UNREACHABLE, 100),
            (ErrorCode::IP_POOL_EXHAUSTED, 101),
            (ErrorCode::LINK_SETUP_FAILED, 102),
            (ErrorCode::AGENT_REJECTED, 103),
            (ErrorCode::Plugin(250), 250),
        ];
        for (code, n) in table {
            assert_eq!(code.code(), n);
            assert_eq!(ErrorCode::from_code(n), code);
        }
    }

    #[test]
    fn plugin_errors_tell_the_user_what_to_do() {
        let e = CniError::agent_unreachable("/var/run/cilium/cilium.sock", "connection refused");
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], json!(100));
        let msg = j["msg"].as_str().expect("msg");
        assert!(msg.contains("is the cilium agent running?"));
        assert!(msg.contains("`cilium agent`") && msg.contains("`cilium local up`"));
        assert!(msg.contains("/var/run/cilium/cilium.sock"));
        assert_eq!(j["details"], json!("connection refused"));
        assert_eq!(CniError::ip_pool_exhausted("default").code.code(), 101);
        assert_eq!(
            CniError::link_setup_failed("eth0", "EEXIST").code.code(),
            102
        );
        assert_eq!(CniError::agent_rejected("policy").code.code(), 103);
        assert_eq!(status_unavailable("socket missing").code.code(), 50);
    }

    #[test]
    fn version_result_lists_all_supported_versions() {
        let all = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        let v = version_result(None);
        assert_eq!(v, json!({"cniVersion": "1.1.0", "supportedVersions": all}));
        let v = version_result(Some("0.4.0"));
        assert_eq!(v["cniVersion"], json!("0.4.0"));
        assert_eq!(v["supportedVersions"], all);
        assert_eq!(version_result(Some("0.1.0"))["cniVersion"], json!("1.1.0"));
    }
}
