//! YAML stream to [`model`](super::model) objects, validated, all-or-nothing.
//!
//! Accepts a multi-document stream (`---`), `kind: List` (and typed lists such as
//! `ServiceList`, whose items may omit `kind`), Services (`v1`) and EndpointSlices
//! (`discovery.k8s.io/v1`); every other object is returned untouched in
//! [`ParsedObjects::others`]. Unknown fields are ignored. The first invalid field fails the
//! whole stream with an error naming the object, the field path and the line.
//!
//! Line numbers: `serde_yaml` values carry no positions, so each document is split out of
//! the text by hand and the offending field is located with an indentation walk over the
//! block-style YAML that Kubernetes tools emit; for flow style (JSON) the error points at
//! the nearest enclosing line that could be found.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use serde_yaml::{Mapping, Value};
use thiserror::Error;

use super::model::{
    AddressType, EndpointPort, EndpointSlice, Protocol, Service, ServicePort, ServiceType,
    SliceEndpoint, TargetPort, DEFAULT_AFFINITY_TIMEOUT, SERVICE_NAME_LABEL,
};

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// Label marking a Service headless whatever its spec says (`corev1.IsHeadlessService`).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API accepts (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// Parser settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// Allowed `nodePort` values.
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            node_port_range: DEFAULT_NODE_PORT_RANGE,
        }
    }
}

/// What a stream held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedObjects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Objects of other kinds (or other API groups, e.g. a Knative `Service`), as parsed.
    pub others: Vec<Value>,
}

/// Why a stream was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LbError {
    /// Not YAML at all (the message is serde_yaml's, with absolute positions).
    #[error("line {line}: invalid YAML: {message}")]
    Yaml { line: usize, message: String },
    /// A Service or EndpointSlice failed validation.
    #[error("line {line}: {object}: {field}: {problem}")]
    Invalid {
        /// 1-based line in the whole stream.
        line: usize,
        /// E.g. `Service default/web`.
        object: String,
        /// Field path inside the document, e.g. `spec.ports[1].nodePort`.
        field: String,
        problem: Problem,
    },
}

impl LbError {
    /// 1-based line in the stream.
    pub fn line(&self) -> usize {
        match self {
            LbError::Yaml { line, .. } | LbError::Invalid { line, .. } => *line,
        }
    }

    /// The validation problem, if this is one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            LbError::Invalid { problem, .. } => Some(problem),
            LbError::Yaml { .. } => None,
        }
    }
}

/// A validation failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("required field is missing")]
    Missing,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("port {value} is out of range 1-65535")]
    PortOutOfRange { value: i64 },
    #[error("nodePort {value} is outside the node port range {min}-{max}")]
    NodePortOutOfRange { value: i64, min: u16, max: u16 },
    #[error("nodePort may not be set on a service of type {type_}")]
    NodePortNotAllowed { type_: ServiceType },
    #[error("invalid IP address {value:?}")]
    InvalidIp { value: String },
    #[error("address {addr} does not match addressType {expected}")]
    AddressFamilyMismatch { addr: IpAddr, expected: AddressType },
    #[error("duplicate port name {name:?}")]
    DuplicatePortName { name: String },
    #[error("duplicate port {port}/{protocol}")]
    DuplicatePort { port: u16, protocol: Protocol },
    #[error("a port name is required when there is more than one port")]
    PortNameRequired,
    #[error("invalid named port {name:?}: {reason}")]
    InvalidPortName { name: String, reason: &'static str },
    #[error("unknown protocol {value:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol { value: String },
    #[error("unsupported value {value:?} (expected {allowed})")]
    UnsupportedValue {
        value: String,
        allowed: &'static str,
    },
    #[error("missing label {SERVICE_NAME_LABEL}")]
    MissingServiceNameLabel,
    #[error("timeoutSeconds {value} is out of range 1-{MAX_AFFINITY_TIMEOUT}")]
    AffinityTimeoutOutOfRange { value: i64 },
    #[error("at least one address is required")]
    NoAddresses,
}

/// Parses a stream with the default options (node ports 30000-32767).
pub fn parse_stream(yaml: &str) -> Result<ParsedObjects, LbError> {
    parse_stream_with(yaml, &ParseOptions::default())
}

/// Parses a stream.
pub fn parse_stream_with(yaml: &str, opts: &ParseOptions) -> Result<ParsedObjects, LbError> {
    let mut out = ParsedObjects::default();
    for doc in split_documents(yaml) {
        let text = doc.lines.join("\n");
        let mut value: Value = match serde_yaml::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Err(yaml_error(&doc, &text, &e)),
        };
        if let Err(e) = value.apply_merge() {
            return Err(yaml_error(&doc, &text, &e));
        }
        if value.is_null() {
            continue;
        }
        let p = Parser { doc: &doc, opts };
        p.dispatch(&value, Vec::new(), None, &mut out)?;
    }
    Ok(out)
}

fn yaml_error(doc: &Doc<'_>, text: &str, e: &serde_yaml::Error) -> LbError {
    // Re-parse with the document's preceding lines blanked so that serde_yaml's own
    // message carries positions in the whole stream.
    let padded = format!("{}{}", "\n".repeat(doc.first_line - 1), text);
    let message = match serde_yaml::from_str::<Value>(&padded) {
        Err(e2) => e2.to_string(),
        Ok(_) => e.to_string(),
    };
    let line = e
        .location()
        .map(|l| doc.first_line + l.line().saturating_sub(1))
        .unwrap_or(doc.first_line);
    LbError::Yaml { line, message }
}

// ---------------------------------------------------------------------------------------
// Documents and line lookup

/// One document of the stream: its lines (the `---` marker blanked) and the 1-based line
/// number of its first line.
struct Doc<'a> {
    lines: Vec<Cow<'a, str>>,
    first_line: usize,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line == marker
        || line
            .strip_prefix(marker)
            .is_some_and(|r| r.starts_with([' ', '\t']))
}

fn split_documents(text: &str) -> Vec<Doc<'_>> {
    let mut docs = vec![Doc {
        lines: Vec::new(),
        first_line: 1,
    }];
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let lineno = i + 1;
        if is_marker(line, "---") {
            docs.push(Doc {
                lines: vec![Cow::Owned(format!("   {}", &line[3..]))],
                first_line: lineno,
            });
        } else if is_marker(line, "...") {
            docs.push(Doc {
                lines: vec![Cow::Borrowed("")],
                first_line: lineno,
            });
        } else if let Some(d) = docs.last_mut() {
            d.lines.push(Cow::Borrowed(line));
        }
    }
    docs
}

/// A step of a field path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

/// Lines `start..end` of a document; the first one's content starts at `first_col` when
/// set (the part after `- ` or after `key:`).
#[derive(Debug, Clone, Copy)]
struct Region {
    start: usize,
    end: usize,
    first_col: Option<usize>,
}

/// Column of a line's content, `None` for blank and comment-only lines.
fn content_col(line: &str) -> Option<usize> {
    let col = line.len() - line.trim_start_matches(' ').len();
    let rest = &line[col..];
    if rest.trim().is_empty() || rest.starts_with('#') {
        None
    } else {
        Some(col)
    }
}

fn is_dash(text: &str) -> bool {
    text == "-" || text.starts_with("- ") || text.starts_with("-\t")
}

/// If `text` is the mapping entry `key: ...`, the text after the colon.
fn key_rest<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    for (open, close) in [("", ""), ("\"", "\""), ("'", "'")] {
        if let Some(r) = text
            .strip_prefix(open)
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix(close))
        {
            let r = r.trim_start_matches(' ');
            if let Some(after) = r.strip_prefix(':') {
                if after.is_empty() || after.starts_with([' ', '\t']) {
                    return Some(after);
                }
            }
        }
    }
    None
}

impl Doc<'_> {
    fn col_of(&self, i: usize, r: Region) -> Option<usize> {
        match r.first_col {
            Some(c) if i == r.start => Some(c),
            _ => content_col(&self.lines[i]),
        }
    }

    fn first_content(&self, r: Region) -> Option<(usize, usize)> {
        (r.start..r.end).find_map(|i| self.col_of(i, r).map(|c| (i, c)))
    }

    /// End of the block that starts at line `i` with indentation `indent`: the following
    /// lines indented deeper (and, when `dash_siblings`, `- ` lines at the same indent,
    /// i.e. a block sequence written at its key's indentation).
    fn block_end(&self, i: usize, end: usize, indent: usize, dash_siblings: bool) -> usize {
        let mut j = i + 1;
        while j < end {
            match content_col(&self.lines[j]) {
                None => {}
                Some(c) if c > indent => {}
                Some(c) if c == indent && dash_siblings && is_dash(&self.lines[j][c..]) => {}
                Some(_) => break,
            }
            j += 1;
        }
        j
    }

    fn step(&self, r: Region, seg: Seg) -> Option<(usize, Region)> {
        let (first, indent) = self.first_content(r)?;
        let mut count = 0;
        for i in first..r.end {
            let Some(col) = self.col_of(i, r) else {
                continue;
            };
            if col < indent {
                break;
            }
            if col != indent {
                continue;
            }
            let text: &str = &self.lines[i][col..];
            match seg {
                Seg::Key(key) => {
                    let Some(rest) = key_rest(text, key) else {
                        continue;
                    };
                    let end = self.block_end(i, r.end, indent, true);
                    let trimmed = rest.trim_start();
                    let region = if trimmed.is_empty() || trimmed.starts_with('#') {
                        Region {
                            start: i + 1,
                            end,
                            first_col: None,
                        }
                    } else {
                        Region {
                            start: i,
                            end,
                            first_col: Some(col + text.len() - trimmed.len()),
                        }
                    };
                    return Some((i, region));
                }
                Seg::Index(n) => {
                    if !is_dash(text) {
                        continue;
                    }
                    if count == n {
                        let end = self.block_end(i, r.end, indent, false);
                        let after = &text[1..];
                        let trimmed = after.trim_start();
                        let region = if trimmed.is_empty() || trimmed.starts_with('#') {
                            Region {
                                start: i + 1,
                                end,
                                first_col: None,
                            }
                        } else {
                            Region {
                                start: i,
                                end,
                                first_col: Some(col + text.len() - trimmed.len()),
                            }
                        };
                        return Some((i, region));
                    }
                    count += 1;
                }
            }
        }
        None
    }

    /// 1-based stream line of the field at `path`, or of its nearest ancestor found.
    fn locate(&self, path: &[Seg]) -> usize {
        let mut region = Region {
            start: 0,
            end: self.lines.len(),
            first_col: None,
        };
        let mut best = self.first_content(region).map(|(i, _)| i).unwrap_or(0);
        for &seg in path {
            match self.step(region, seg) {
                Some((line, next)) => {
                    best = line;
                    region = next;
                }
                None => break,
            }
        }
        self.first_line + best
    }
}

// ---------------------------------------------------------------------------------------
// Conversion

struct Parser<'a> {
    doc: &'a Doc<'a>,
    opts: &'a ParseOptions,
}

/// Error context for one object: where it sits in the document and what to call it.
struct Obj<'a> {
    p: &'a Parser<'a>,
    base: &'a [Seg],
    name: String,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn cat(a: &[Seg], b: &[Seg]) -> Vec<Seg> {
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    v
}

impl Obj<'_> {
    fn err(&self, rel: &[Seg], problem: Problem) -> LbError {
        let full = cat(self.base, rel);
        LbError::Invalid {
            line: self.p.doc.locate(&full),
            object: self.name.clone(),
            field: render_path(&full),
            problem,
        }
    }

    /// The value at `key`, `None` when absent or null.
    fn get<'v>(&self, map: &'v Mapping, key: &str) -> Option<&'v Value> {
        map.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, at: &[Seg], expected: &'static str, v: &Value) -> LbError {
        self.err(
            at,
            Problem::WrongType {
                expected,
                found: type_name(v),
            },
        )
    }

    fn str_at<'v>(
        &self,
        map: &'v Mapping,
        at: &[Seg],
        key: &'static str,
    ) -> Result<Option<&'v str>, LbError> {
        match self.get(map, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(&cat(at, &[Seg::Key(key)]), "a string", v)),
        }
    }

    fn int_at(&self, map: &Mapping, at: &[Seg], key: &'static str) -> Result<Option<i64>, LbError> {
        match self.get(map, key) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(self.wrong(&cat(at, &[Seg::Key(key)]), "an integer", v)),
            },
            Some(v) => Err(self.wrong(&cat(at, &[Seg::Key(key)]), "an integer", v)),
        }
    }

    fn bool_at(
        &self,
        map: &Mapping,
        at: &[Seg],
        key: &'static str,
    ) -> Result<Option<bool>, LbError> {
        match self.get(map, key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(&cat(at, &[Seg::Key(key)]), "a boolean", v)),
        }
    }

    fn map_at<'v>(
        &self,
        map: &'v Mapping,
        at: &[Seg],
        key: &'static str,
    ) -> Result<Option<&'v Mapping>, LbError> {
        match self.get(map, key) {
            None => Ok(None),
            Some(Value::Mapping(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong(&cat(at, &[Seg::Key(key)]), "a mapping", v)),
        }
    }

    fn seq_at<'v>(
        &self,
        map: &'v Mapping,
        at: &[Seg],
        key: &'static str,
    ) -> Result<&'v [Value], LbError> {
        match self.get(map, key) {
            None => Ok(&[]),
            Some(Value::Sequence(s)) => Ok(s),
            Some(v) => Err(self.wrong(&cat(at, &[Seg::Key(key)]), "a list", v)),
        }
    }

    fn item_map<'v>(&self, v: &'v Value, at: &[Seg]) -> Result<&'v Mapping, LbError> {
        match v {
            Value::Mapping(m) => Ok(m),
            v => Err(self.wrong(at, "a mapping", v)),
        }
    }

    fn item_str<'v>(&self, v: &'v Value, at: &[Seg]) -> Result<&'v str, LbError> {
        match v {
            Value::String(s) => Ok(s),
            v => Err(self.wrong(at, "a string", v)),
        }
    }

    /// A port number 1-65535 at `key`.
    fn port_at(
        &self,
        map: &Mapping,
        at: &[Seg],
        key: &'static str,
    ) -> Result<Option<u16>, LbError> {
        match self.int_at(map, at, key)? {
            None => Ok(None),
            Some(n) => match u16::try_from(n) {
                Ok(p) if p != 0 => Ok(Some(p)),
                _ => Err(self.err(
                    &cat(at, &[Seg::Key(key)]),
                    Problem::PortOutOfRange { value: n },
                )),
            },
        }
    }

    fn protocol_at(&self, map: &Mapping, at: &[Seg]) -> Result<Protocol, LbError> {
        match self.str_at(map, at, "protocol")? {
            None => Ok(Protocol::Tcp),
            Some(s) => Protocol::from_k8s(s).ok_or_else(|| {
                self.err(
                    &cat(at, &[Seg::Key("protocol")]),
                    Problem::UnknownProtocol {
                        value: s.to_string(),
                    },
                )
            }),
        }
    }

    fn ip(&self, s: &str, at: &[Seg]) -> Result<IpAddr, LbError> {
        s.parse::<IpAddr>().map_err(|_| {
            self.err(
                at,
                Problem::InvalidIp {
                    value: s.to_string(),
                },
            )
        })
    }

    /// A list of IP strings at `key`.
    fn ips_at(&self, map: &Mapping, at: &[Seg], key: &'static str) -> Result<Vec<IpAddr>, LbError> {
        let mut out = Vec::new();
        for (i, v) in self.seq_at(map, at, key)?.iter().enumerate() {
            let here = cat(at, &[Seg::Key(key), Seg::Index(i)]);
            let ip = self.ip(self.item_str(v, &here)?, &here)?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    fn one_of<T>(
        &self,
        map: &Mapping,
        at: &[Seg],
        key: &'static str,
        allowed: &'static str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, LbError> {
        match self.str_at(map, at, key)? {
            None => Ok(None),
            Some(s) => f(s).map(Some).ok_or_else(|| {
                self.err(
                    &cat(at, &[Seg::Key(key)]),
                    Problem::UnsupportedValue {
                        value: s.to_string(),
                        allowed,
                    },
                )
            }),
        }
    }
}

/// `metadata`: (namespace, name, labels).
struct Meta<'v> {
    namespace: String,
    name: String,
    labels: Option<&'v Mapping>,
}

/// Checks an IANA service name (a named `targetPort`): 1-15 of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or doubled hyphen.
fn iana_svc_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 15 {
        return Some("must be 1-15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must contain only lowercase letters, digits and '-'");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Some("must not begin or end with '-' or contain '--'");
    }
    None
}

impl<'a> Parser<'a> {
    fn dispatch(
        &self,
        value: &Value,
        base: Vec<Seg>,
        implied: Option<(&str, Option<&str>)>,
        out: &mut ParsedObjects,
    ) -> Result<(), LbError> {
        let Some(map) = value.as_mapping() else {
            out.others.push(value.clone());
            return Ok(());
        };
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .or(implied.map(|i| i.0));
        let api = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .or(implied.and_then(|i| i.1));
        match (api, kind) {
            (Some("v1"), Some("Service")) => {
                let s = self.service(map, &base)?;
                out.services.push(s);
            }
            (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
                let s = self.slice(map, &base)?;
                out.slices.push(s);
            }
            (_, Some(list_kind)) if list_kind.ends_with("List") && map.contains_key("items") => {
                let obj = Obj {
                    p: self,
                    base: &base,
                    name: list_kind.to_string(),
                };
                let item_kind = list_kind.strip_suffix("List").filter(|k| !k.is_empty());
                for (i, item) in obj.seq_at(map, &[], "items")?.iter().enumerate() {
                    let path = cat(&base, &[Seg::Key("items"), Seg::Index(i)]);
                    self.dispatch(item, path, item_kind.map(|k| (k, api)), out)?;
                }
            }
            _ => out.others.push(value.clone()),
        }
        Ok(())
    }

    fn meta<'v>(&self, map: &'v Mapping, base: &[Seg], kind: &str) -> Result<Meta<'v>, LbError> {
        let obj = Obj {
            p: self,
            base,
            name: format!("{kind} (unnamed)"),
        };
        let Some(md) = obj.map_at(map, &[], "metadata")? else {
            return Err(obj.err(&[Seg::Key("metadata")], Problem::Missing));
        };
        let at = [Seg::Key("metadata")];
        let name = match obj.str_at(md, &at, "name")? {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(obj.err(&[Seg::Key("metadata"), Seg::Key("name")], Problem::Missing)),
        };
        let namespace = match obj.str_at(md, &at, "namespace")? {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => "default".to_string(),
        };
        let labels = obj.map_at(md, &at, "labels")?;
        Ok(Meta {
            namespace,
            name,
            labels,
        })
    }

    fn service(&self, map: &Mapping, base: &[Seg]) -> Result<Service, LbError> {
        let meta = self.meta(map, base, "Service")?;
        let o = Obj {
            p: self,
            base,
            name: format!("Service {}/{}", meta.namespace, meta.name),
        };
        let empty = Mapping::new();
        let spec = o.map_at(map, &[], "spec")?.unwrap_or(&empty);
        let sp = [Seg::Key("spec")];

        let type_ = o
            .one_of(
                spec,
                &sp,
                "type",
                "ClusterIP, NodePort, LoadBalancer or ExternalName",
                ServiceType::from_k8s,
            )?
            .unwrap_or_default();

        let mut headless = meta.labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL));
        let mut cluster_ips = Vec::new();
        let mut add_cluster_ip =
            |s: &str, at: &[Seg], headless: &mut bool| -> Result<(), LbError> {
                if s.eq_ignore_ascii_case("none") {
                    *headless = true;
                } else if !s.is_empty() {
                    let ip = o.ip(s, at)?;
                    if !cluster_ips.contains(&ip) {
                        cluster_ips.push(ip);
                    }
                }
                Ok(())
            };
        if let Some(s) = o.str_at(spec, &sp, "clusterIP")? {
            add_cluster_ip(s, &[Seg::Key("spec"), Seg::Key("clusterIP")], &mut headless)?;
        }
        for (i, v) in o.seq_at(spec, &sp, "clusterIPs")?.iter().enumerate() {
            let at = [Seg::Key("spec"), Seg::Key("clusterIPs"), Seg::Index(i)];
            add_cluster_ip(o.item_str(v, &at)?, &at, &mut headless)?;
        }
        if headless {
            cluster_ips.clear();
        }

        let raw_ports = o.seq_at(spec, &sp, "ports")?;
        let mut ports: Vec<ServicePort> = Vec::with_capacity(raw_ports.len());
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for (i, v) in raw_ports.iter().enumerate() {
            let at = [Seg::Key("spec"), Seg::Key("ports"), Seg::Index(i)];
            let pm = o.item_map(v, &at)?;
            let name = o.str_at(pm, &at, "name")?.filter(|n| !n.is_empty());
            let protocol = o.protocol_at(pm, &at)?;
            let Some(port) = o.port_at(pm, &at, "port")? else {
                return Err(o.err(&cat(&at, &[Seg::Key("port")]), Problem::Missing));
            };
            let target_port = match o.get(pm, "targetPort") {
                None => TargetPort::Number(port),
                Some(Value::String(s)) => {
                    if let Some(reason) = iana_svc_name_problem(s) {
                        return Err(o.err(
                            &cat(&at, &[Seg::Key("targetPort")]),
                            Problem::InvalidPortName {
                                name: s.clone(),
                                reason,
                            },
                        ));
                    }
                    TargetPort::Named(s.clone())
                }
                Some(Value::Number(_)) => match o.port_at(pm, &at, "targetPort")? {
                    Some(n) => TargetPort::Number(n),
                    None => TargetPort::Number(port),
                },
                Some(v) => {
                    return Err(o.wrong(
                        &cat(&at, &[Seg::Key("targetPort")]),
                        "an integer or a string",
                        v,
                    ))
                }
            };
            let node_port = match o.int_at(pm, &at, "nodePort")? {
                None | Some(0) => None,
                Some(n) => {
                    let here = cat(&at, &[Seg::Key("nodePort")]);
                    if !type_.has_node_ports() {
                        return Err(o.err(&here, Problem::NodePortNotAllowed { type_ }));
                    }
                    let range = &self.opts.node_port_range;
                    match u16::try_from(n) {
                        Ok(p) if range.contains(&p) => Some(p),
                        _ => {
                            return Err(o.err(
                                &here,
                                Problem::NodePortOutOfRange {
                                    value: n,
                                    min: *range.start(),
                                    max: *range.end(),
                                },
                            ))
                        }
                    }
                }
            };
            if let Some(n) = name {
                if !names.insert(n) {
                    return Err(o.err(
                        &cat(&at, &[Seg::Key("name")]),
                        Problem::DuplicatePortName {
                            name: n.to_string(),
                        },
                    ));
                }
            } else if raw_ports.len() > 1 {
                return Err(o.err(&at, Problem::PortNameRequired));
            }
            if !numbers.insert((port, protocol)) {
                return Err(o.err(
                    &cat(&at, &[Seg::Key("port")]),
                    Problem::DuplicatePort { port, protocol },
                ));
            }
            ports.push(ServicePort {
                name: name.map(str::to_string),
                protocol,
                port,
                target_port,
                node_port,
            });
        }

        let external_ips = o.ips_at(spec, &sp, "externalIPs")?;

        let session_affinity = match o.one_of(
            spec,
            &sp,
            "sessionAffinity",
            "ClientIP or None",
            |s| match s {
                "ClientIP" => Some(true),
                "None" => Some(false),
                _ => None,
            },
        )? {
            Some(true) => {
                let mut timeout = DEFAULT_AFFINITY_TIMEOUT;
                let cfg_at = [Seg::Key("spec"), Seg::Key("sessionAffinityConfig")];
                if let Some(cfg) = o.map_at(spec, &sp, "sessionAffinityConfig")? {
                    let cip_at = cat(&cfg_at, &[Seg::Key("clientIP")]);
                    if let Some(cip) = o.map_at(cfg, &cfg_at, "clientIP")? {
                        if let Some(t) = o.int_at(cip, &cip_at, "timeoutSeconds")? {
                            match u32::try_from(t) {
                                Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => timeout = t,
                                _ => {
                                    return Err(o.err(
                                        &cat(&cip_at, &[Seg::Key("timeoutSeconds")]),
                                        Problem::AffinityTimeoutOutOfRange { value: t },
                                    ))
                                }
                            }
                        }
                    }
                }
                Some(timeout)
            }
            _ => None,
        };

        let policy = |s: &str| match s {
            "Local" => Some(true),
            "Cluster" => Some(false),
            _ => None,
        };
        let external_traffic_local = o
            .one_of(
                spec,
                &sp,
                "externalTrafficPolicy",
                "Cluster or Local",
                policy,
            )?
            .unwrap_or(false);
        let internal_traffic_local = o
            .one_of(
                spec,
                &sp,
                "internalTrafficPolicy",
                "Cluster or Local",
                policy,
            )?
            .unwrap_or(false);
        let has_selector = o
            .map_at(spec, &sp, "selector")?
            .is_some_and(|m| !m.is_empty());

        let mut load_balancer_ips = Vec::new();
        if let Some(status) = o.map_at(map, &[], "status")? {
            let st = [Seg::Key("status")];
            if let Some(lb) = o.map_at(status, &st, "loadBalancer")? {
                let lbp = [Seg::Key("status"), Seg::Key("loadBalancer")];
                for (i, v) in o.seq_at(lb, &lbp, "ingress")?.iter().enumerate() {
                    let at = cat(&lbp, &[Seg::Key("ingress"), Seg::Index(i)]);
                    let ing = o.item_map(v, &at)?;
                    let Some(ip) = o.str_at(ing, &at, "ip")?.filter(|s| !s.is_empty()) else {
                        continue;
                    };
                    let ip = o.ip(ip, &cat(&at, &[Seg::Key("ip")]))?;
                    let vip = o
                        .one_of(ing, &at, "ipMode", "VIP or Proxy", |s| match s {
                            "VIP" => Some(true),
                            "Proxy" => Some(false),
                            _ => None,
                        })?
                        .unwrap_or(true);
                    if vip && !load_balancer_ips.contains(&ip) {
                        load_balancer_ips.push(ip);
                    }
                }
            }
        }

        Ok(Service {
            namespace: meta.namespace,
            name: meta.name,
            type_,
            headless,
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ips,
            session_affinity,
            external_traffic_local,
            internal_traffic_local,
            has_selector,
        })
    }

    fn slice(&self, map: &Mapping, base: &[Seg]) -> Result<EndpointSlice, LbError> {
        let meta = self.meta(map, base, "EndpointSlice")?;
        let o = Obj {
            p: self,
            base,
            name: format!("EndpointSlice {}/{}", meta.namespace, meta.name),
        };
        let service_name = match meta.labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(o.err(
                    &[Seg::Key("metadata"), Seg::Key("labels")],
                    Problem::MissingServiceNameLabel,
                ))
            }
        };
        let Some(address_type) = o.one_of(
            map,
            &[],
            "addressType",
            "IPv4, IPv6 or FQDN",
            AddressType::from_k8s,
        )?
        else {
            return Err(o.err(&[Seg::Key("addressType")], Problem::Missing));
        };

        let mut ports = Vec::new();
        let mut names = HashSet::new();
        for (i, v) in o.seq_at(map, &[], "ports")?.iter().enumerate() {
            let at = [Seg::Key("ports"), Seg::Index(i)];
            let pm = o.item_map(v, &at)?;
            let name = o.str_at(pm, &at, "name")?.filter(|n| !n.is_empty());
            if !names.insert(name) {
                return Err(o.err(
                    &cat(&at, &[Seg::Key("name")]),
                    Problem::DuplicatePortName {
                        name: name.unwrap_or("").to_string(),
                    },
                ));
            }
            let protocol = o.protocol_at(pm, &at)?;
            let port = o.port_at(pm, &at, "port")?;
            ports.push(EndpointPort {
                name: name.map(str::to_string),
                protocol,
                port,
            });
        }

        let mut endpoints = Vec::new();
        for (i, v) in o.seq_at(map, &[], "endpoints")?.iter().enumerate() {
            let at = [Seg::Key("endpoints"), Seg::Index(i)];
            let em = o.item_map(v, &at)?;
            let raw = o.seq_at(em, &at, "addresses")?;
            if raw.is_empty() {
                return Err(o.err(&cat(&at, &[Seg::Key("addresses")]), Problem::NoAddresses));
            }
            let mut addresses = Vec::new();
            for (j, a) in raw.iter().enumerate() {
                let here = cat(&at, &[Seg::Key("addresses"), Seg::Index(j)]);
                let s = o.item_str(a, &here)?;
                let want_v4 = match address_type {
                    AddressType::Fqdn => continue,
                    AddressType::Ipv4 => true,
                    AddressType::Ipv6 => false,
                };
                let ip = o.ip(s, &here)?;
                if ip.is_ipv4() != want_v4 {
                    return Err(o.err(
                        &here,
                        Problem::AddressFamilyMismatch {
                            addr: ip,
                            expected: address_type,
                        },
                    ));
                }
                addresses.push(ip);
            }
            let cond_at = cat(&at, &[Seg::Key("conditions")]);
            let (ready, serving, terminating) = match o.map_at(em, &at, "conditions")? {
                None => (None, None, None),
                Some(c) => (
                    o.bool_at(c, &cond_at, "ready")?,
                    o.bool_at(c, &cond_at, "serving")?,
                    o.bool_at(c, &cond_at, "terminating")?,
                ),
            };
            endpoints.push(SliceEndpoint {
                addresses,
                ready,
                serving,
                terminating,
                node_name: o.str_at(em, &at, "nodeName")?.map(str::to_string),
                zone: o.str_at(em, &at, "zone")?.map(str::to_string),
            });
        }

        Ok(EndpointSlice {
            namespace: meta.namespace,
            name: meta.name,
            service_name,
            address_type,
            ports,
            endpoints,
        })
    }
}

impl fmt::Display for ParsedObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} services, {} endpoint slices, {} other objects",
            self.services.len(),
            self.slices.len(),
            self.others.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        match parse_stream(yaml) {
            Ok(p) => panic!("expected an error, parsed {p}"),
            Err(e) => e.to_string(),
        }
    }

    const SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: NodePort
  clusterIP: 10.96.0.1
  ports:
  - name: http
    port: 80
    targetPort: 8080
    nodePort: 30080
  - name: https
    port: 443
";

    /// `SVC` with `from` replaced by `to` (which must occur).
    fn svc_with(from: &str, to: &str) -> String {
        assert!(SVC.contains(from), "{from}");
        SVC.replacen(from, to, 1)
    }

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses:
  - 10.244.0.1
  conditions:
    ready: true
";

    fn slice_with(from: &str, to: &str) -> String {
        assert!(SLICE.contains(from), "{from}");
        SLICE.replacen(from, to, 1)
    }

    #[test]
    fn parses_services_and_slices_with_defaults() {
        let p = parse_stream(&format!("{SVC}---\n{SLICE}")).expect("valid");
        assert_eq!(p.services.len(), 1);
        assert_eq!(p.slices.len(), 1);
        let s = &p.services[0];
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("shop", "web"));
        assert_eq!(s.type_, ServiceType::NodePort);
        assert_eq!(
            s.cluster_ips,
            vec!["10.96.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            s.ports[0],
            ServicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: Some(30080),
            }
        );
        assert_eq!(s.ports[1].target_port, TargetPort::Number(443));
        assert_eq!(s.ports[1].node_port, None);
        assert!(!s.headless && !s.has_selector);
        assert_eq!(s.session_affinity, None);
        let e = &p.slices[0];
        assert_eq!(e.service_name, "web");
        assert_eq!(e.address_type, AddressType::Ipv4);
        assert_eq!(
            e.ports,
            vec![EndpointPort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: Some(8080)
            }]
        );
        assert_eq!(e.endpoints[0].ready, Some(true));
        assert_eq!(e.endpoints[0].serving, None);
        assert!(e.endpoints[0].is_serving() && !e.endpoints[0].is_terminating());
    }

    #[test]
    fn service_fields() {
        let y = "apiVersion: v1
kind: Service
metadata:
  name: x
  labels: {app: x}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.9
  clusterIPs: [10.96.0.9, 'fd00::9']
  externalIPs: [198.51.100.1, 198.51.100.1]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  selector: {app: x}
  ports:
  - {port: 53, protocol: UDP, targetPort: dns, nodePort: 0}
status:
  loadBalancer:
    ingress:
    - {ip: 203.0.113.9, ipMode: VIP}
    - {hostname: a.example}
    - {ip: 203.0.113.8, ipMode: Proxy}
";
        let p = parse_stream(y).expect("valid");
        let s = &p.services[0];
        assert_eq!(s.namespace, "default");
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(s.external_ips.len(), 1);
        assert!(s.external_traffic_local && s.internal_traffic_local && s.has_selector);
        assert_eq!(s.session_affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(s.ports[0].protocol, Protocol::Udp);
        assert_eq!(s.ports[0].target_port, TargetPort::Named("dns".into()));
        assert_eq!(s.ports[0].node_port, None);
        assert_eq!(
            s.load_balancer_ips,
            vec!["203.0.113.9".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn headless_and_external_name() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, clusterIPs: [None], ports: [{port: 80}]}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {name: l, labels: {service.kubernetes.io/headless: ''}}\nspec: {clusterIP: 10.96.0.1}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {type: ExternalName, externalName: db.example.com}\n";
        let p = parse_stream(y).expect("valid");
        assert!(p.services[0].headless && p.services[0].cluster_ips.is_empty());
        assert!(p.services[1].headless && p.services[1].cluster_ips.is_empty());
        assert_eq!(p.services[2].type_, ServiceType::ExternalName);
    }

    #[test]
    fn streams_lists_and_other_kinds() {
        let y = "# leading comment\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n\
                 ---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\nspec: {template: {}}\n\
                 ...\n---\napiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: a}\n  spec: {clusterIP: 10.96.0.1}\n\
                 - metadata: {name: b}\n  spec: {clusterIP: 10.96.0.2}\n---\n\
                 apiVersion: v1\nkind: List\nitems:\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
                 metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}\n  addressType: IPv6\n  \
                 endpoints: [{addresses: ['fd00::1']}]\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n\
                 ---\n{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"j\"}, \"spec\": {\"clusterIP\": \"10.96.0.3\"}}\n";
        let p = parse_stream(y).expect("valid");
        let names: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "j"]);
        assert_eq!(p.slices.len(), 1);
        assert_eq!(
            p.slices[0].endpoints[0].addresses[0],
            "fd00::1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(p.others.len(), 3, "{:?}", p.others);
        assert_eq!(
            p.to_string(),
            "3 services, 1 endpoint slices, 3 other objects"
        );
    }

    #[test]
    fn crlf_and_empty_input() {
        let p = parse_stream(&SVC.replace('\n', "\r\n")).expect("valid");
        assert_eq!(p.services.len(), 1);
        assert_eq!(parse_stream("").expect("empty"), ParsedObjects::default());
        assert_eq!(
            parse_stream("---\n# nothing\n---\n").expect("empty"),
            ParsedObjects::default()
        );
    }

    #[test]
    fn fqdn_slices_keep_no_addresses() {
        let p = parse_stream(
            &slice_with("addressType: IPv4", "addressType: FQDN")
                .replace("10.244.0.1", "www.example.com"),
        )
        .expect("valid");
        assert_eq!(p.slices[0].address_type, AddressType::Fqdn);
        assert!(p.slices[0].endpoints[0].addresses.is_empty());
    }

    #[test]
    fn yaml_syntax_error_has_the_stream_line() {
        let e =
            parse_stream(&format!("{SVC}---\napiVersion: v1\nkind: [\n")).expect_err("bad yaml");
        // The unclosed flow sequence is noticed at the end of the input.
        assert_eq!(e.line(), 19);
        assert!(e.to_string().starts_with("line 19: invalid YAML: "), "{e}");
        assert!(e.to_string().contains("at line 19 column 1"), "{e}");
        assert!(e.problem().is_none());
        let e = parse_stream("a: 1\na: 2\n").expect_err("duplicate key");
        assert!(e.to_string().contains("duplicate entry"), "{e}");
    }

    #[test]
    fn port_out_of_range() {
        assert_eq!(
            err(&svc_with("port: 443", "port: 70000")),
            "line 15: Service shop/web: spec.ports[1].port: port 70000 is out of range 1-65535"
        );
        assert_eq!(
            err(&svc_with("port: 443", "port: 0")),
            "line 15: Service shop/web: spec.ports[1].port: port 0 is out of range 1-65535"
        );
        assert_eq!(
            err(&svc_with("targetPort: 8080", "targetPort: -1")),
            "line 12: Service shop/web: spec.ports[0].targetPort: port -1 is out of range 1-65535"
        );
        assert_eq!(
            err(&slice_with("port: 8080", "port: 65536")),
            "line 11: EndpointSlice shop/web-1: ports[0].port: port 65536 is out of range 1-65535"
        );
    }

    #[test]
    fn node_port_outside_range() {
        assert_eq!(
            err(&svc_with("nodePort: 30080", "nodePort: 8080")),
            "line 13: Service shop/web: spec.ports[0].nodePort: nodePort 8080 is outside the node port range 30000-32767"
        );
        assert_eq!(
            err(&svc_with("nodePort: 30080", "nodePort: 32768")),
            "line 13: Service shop/web: spec.ports[0].nodePort: nodePort 32768 is outside the node port range 30000-32767"
        );
        let wide = ParseOptions {
            node_port_range: 20000..=40000,
        };
        let p = parse_stream_with(&svc_with("nodePort: 30080", "nodePort: 32768"), &wide)
            .expect("wider range");
        assert_eq!(p.services[0].ports[0].node_port, Some(32768));
        assert_eq!(
            err(&svc_with("type: NodePort", "type: ClusterIP")),
            "line 13: Service shop/web: spec.ports[0].nodePort: nodePort may not be set on a service of type ClusterIP"
        );
    }

    #[test]
    fn invalid_ip() {
        assert_eq!(
            err(&svc_with("clusterIP: 10.96.0.1", "clusterIP: 10.96.0.300")),
            "line 8: Service shop/web: spec.clusterIP: invalid IP address \"10.96.0.300\""
        );
        assert_eq!(
            err(&svc_with(
                "clusterIP: 10.96.0.1",
                "clusterIP: 10.96.0.1\n  externalIPs:\n  - 1.2.3.4\n  - example.com"
            )),
            "line 11: Service shop/web: spec.externalIPs[1]: invalid IP address \"example.com\""
        );
        assert_eq!(
            err(&format!("{SVC}status:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.x\n")),
            "line 19: Service shop/web: status.loadBalancer.ingress[0].ip: invalid IP address \"203.0.113.x\""
        );
        assert_eq!(
            err(&slice_with("10.244.0.1", "10.244.0")),
            "line 14: EndpointSlice shop/web-1: endpoints[0].addresses[0]: invalid IP address \"10.244.0\""
        );
        assert_eq!(
            err(&slice_with("10.244.0.1", "fd00::1")),
            "line 14: EndpointSlice shop/web-1: endpoints[0].addresses[0]: address fd00::1 does not match addressType IPv4"
        );
    }

    #[test]
    fn duplicate_port_name() {
        assert_eq!(
            err(&svc_with("name: https", "name: http")),
            "line 14: Service shop/web: spec.ports[1].name: duplicate port name \"http\""
        );
        assert_eq!(
            err(&slice_with(
                "  port: 8080\n",
                "  port: 8080\n- name: http\n  port: 8081\n"
            )),
            "line 12: EndpointSlice shop/web-1: ports[1].name: duplicate port name \"http\""
        );
        assert_eq!(
            err(&svc_with("port: 443", "port: 80")),
            "line 15: Service shop/web: spec.ports[1].port: duplicate port 80/TCP"
        );
        assert_eq!(
            err(&svc_with("  - name: https\n", "  - protocol: TCP\n")),
            "line 14: Service shop/web: spec.ports[1]: a port name is required when there is more than one port"
        );
    }

    #[test]
    fn unknown_protocol() {
        assert_eq!(
            err(&svc_with("port: 443", "port: 443\n    protocol: tcp")),
            "line 16: Service shop/web: spec.ports[1].protocol: unknown protocol \"tcp\" (expected TCP, UDP or SCTP)"
        );
        assert_eq!(
            err(&slice_with("  port: 8080", "  port: 8080\n  protocol: ICMP")),
            "line 12: EndpointSlice shop/web-1: ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)"
        );
    }

    #[test]
    fn slice_without_service_name_label() {
        assert_eq!(
            err(&slice_with("    kubernetes.io/service-name: web\n", "    app: web\n")),
            "line 6: EndpointSlice shop/web-1: metadata.labels: missing label kubernetes.io/service-name"
        );
        assert_eq!(
            err(&slice_with("  labels:\n    kubernetes.io/service-name: web\n", "")),
            "line 3: EndpointSlice shop/web-1: metadata.labels: missing label kubernetes.io/service-name"
        );
    }

    #[test]
    fn other_field_errors() {
        assert_eq!(
            err(&svc_with("  name: web\n", "")),
            "line 3: Service (unnamed): metadata.name: required field is missing"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: Service\nspec: {}\n"),
            "line 1: Service (unnamed): metadata: required field is missing"
        );
        assert_eq!(
            err(&svc_with("port: 443", "port: \"443\"")),
            "line 15: Service shop/web: spec.ports[1].port: expected an integer, found a string"
        );
        assert_eq!(
            err(&svc_with("port: 443", "port: 443.5")),
            "line 15: Service shop/web: spec.ports[1].port: expected an integer, found a number"
        );
        assert_eq!(
            err(&svc_with(
                "  - name: https\n    port: 443\n",
                "  - name: https\n"
            )),
            "line 14: Service shop/web: spec.ports[1].port: required field is missing"
        );
        assert_eq!(
            err(&svc_with("type: NodePort", "type: Nodeport")),
            "line 7: Service shop/web: spec.type: unsupported value \"Nodeport\" (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"
        );
        assert_eq!(
            err(&svc_with("type: NodePort", "type: NodePort\n  externalTrafficPolicy: Global")),
            "line 8: Service shop/web: spec.externalTrafficPolicy: unsupported value \"Global\" (expected Cluster or Local)"
        );
        assert_eq!(
            err(&svc_with("type: NodePort", "type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 86401")),
            "line 11: Service shop/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: timeoutSeconds 86401 is out of range 1-86400"
        );
        assert_eq!(
            err(&svc_with("targetPort: 8080", "targetPort: \"8080\"")),
            "line 12: Service shop/web: spec.ports[0].targetPort: invalid named port \"8080\": must contain at least one letter"
        );
        assert_eq!(
            err(&svc_with("targetPort: 8080", "targetPort: Http")),
            "line 12: Service shop/web: spec.ports[0].targetPort: invalid named port \"Http\": must contain only lowercase letters, digits and '-'"
        );
        assert_eq!(
            err(&svc_with("  ports:\n", "  ports: 80\n  oops:\n")),
            "line 9: Service shop/web: spec.ports: expected a list, found a number"
        );
        assert_eq!(
            err(&slice_with("addressType: IPv4", "addressType: ipv4")),
            "line 8: EndpointSlice shop/web-1: addressType: unsupported value \"ipv4\" (expected IPv4, IPv6 or FQDN)"
        );
        assert_eq!(
            err(&slice_with("addressType: IPv4\n", "")),
            "line 1: EndpointSlice shop/web-1: addressType: required field is missing"
        );
        assert_eq!(
            err(&slice_with("- addresses:\n  - 10.244.0.1\n", "- addresses: []\n")),
            "line 13: EndpointSlice shop/web-1: endpoints[0].addresses: at least one address is required"
        );
        assert_eq!(
            err(&slice_with("ready: true", "ready: yes")),
            "line 16: EndpointSlice shop/web-1: endpoints[0].conditions.ready: expected a boolean, found a string"
        );
    }

    #[test]
    fn lines_count_from_the_start_of_the_stream() {
        let y = format!(
            "# comment\n---\n{SLICE}---\n{}",
            svc_with("port: 443", "port: 99999")
        );
        assert_eq!(
            err(&y),
            "line 34: Service shop/web: spec.ports[1].port: port 99999 is out of range 1-65535"
        );
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: a\n  spec:\n    ports:\n    - port: 1\n      name: x\n    - name: y\n      port: 0\n";
        assert_eq!(
            err(list),
            "line 13: Service default/a: items[0].spec.ports[1].port: port 0 is out of range 1-65535"
        );
        // Flow style: the nearest line found.
        let flow =
            "apiVersion: v1\nkind: Service\nmetadata: {name: f}\nspec: {ports: [{port: 0}]}\n";
        assert_eq!(
            err(flow),
            "line 4: Service default/f: spec.ports[0].port: port 0 is out of range 1-65535"
        );
    }

    #[test]
    fn all_or_nothing() {
        let y = format!("{SLICE}---\n{}", svc_with("port: 443", "port: 0"));
        assert!(parse_stream(&y).is_err());
    }

    #[test]
    fn iana_names() {
        assert_eq!(iana_svc_name_problem("http"), None);
        assert_eq!(iana_svc_name_problem("h2c-8080"), None);
        assert!(iana_svc_name_problem("").is_some());
        assert!(iana_svc_name_problem("a-very-long-port-name").is_some());
        assert!(iana_svc_name_problem("-http").is_some());
        assert!(iana_svc_name_problem("ht--tp").is_some());
    }
}
