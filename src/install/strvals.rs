//! Helm's `--set` syntax ("strvals"): `a.b=c,list[0]=x,l={a,b}`, with Helm's typing rules.
//!
//! A port of the algorithm of Helm's `pkg/strvals/parser.go` (key/value scanning, list
//! indices, `{a,b}` list literals, `\` escapes), returning errors where Helm panics on
//! a type clash (e.g. `a=1,a.b=2`).
use serde_yaml::{Mapping, Number, Value};

/// Largest list index accepted (as Helm: no gigantic allocations from `a[99999999]=x`).
pub const MAX_INDEX: usize = 65536;
/// Deepest `a.b.c...` nesting accepted (as Helm).
pub const MAX_NESTED_NAME_LEVEL: usize = 30;

/// A `--set` argument that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot parse --set argument {arg:?}: {msg}")]
pub struct StrvalsError {
    pub arg: String,
    pub msg: String,
}

/// Parses `s` (one `--set` argument, possibly several comma-separated assignments) into
/// `dest`. With `as_string` (`--set-string`) every value stays a string.
pub fn parse_into(s: &str, dest: &mut Mapping, as_string: bool) -> Result<(), StrvalsError> {
    let mut p = Parser {
        chars: s.chars().collect(),
        pos: 0,
        as_string,
    };
    let err = |msg: String| StrvalsError {
        arg: s.to_string(),
        msg,
    };
    loop {
        match p.key(dest, 0) {
            Ok(()) => {}
            Err(Stop::Eof) => return Ok(()),
            Err(Stop::Err(m)) => return Err(err(m)),
        }
    }
}

/// Parses one `--set` argument into a fresh map.
pub fn parse(s: &str, as_string: bool) -> Result<Mapping, StrvalsError> {
    let mut m = Mapping::new();
    parse_into(s, &mut m, as_string)?;
    Ok(m)
}

/// Helm's `typedVal`: true/false/null (any case), `0`, integers not starting with 0; the
/// rest (floats included) stays a string.
pub fn typed_value(s: &str, as_string: bool) -> Value {
    if as_string {
        return Value::String(s.to_string());
    }
    if s.eq_ignore_ascii_case("true") {
        return Value::Bool(true);
    }
    if s.eq_ignore_ascii_case("false") {
        return Value::Bool(false);
    }
    if s.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    if s == "0" {
        return Value::Number(Number::from(0i64));
    }
    if !s.is_empty() && !s.starts_with('0') {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(Number::from(i));
        }
    }
    Value::String(s.to_string())
}

/// Why scanning stopped: the end of input (Go's io.EOF, not an error at top level) or an error.
enum Stop {
    Eof,
    Err(String),
}

type R<T> = Result<T, Stop>;

fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(Stop::Err(msg.into()))
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    as_string: bool,
}

impl Parser {
    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn unread(&mut self) {
        self.pos -= 1;
    }

    /// Reads up to one of `stop` (consumed and returned); `\x` is a literal `x`.
    /// `Err` carries what was read when the input ended first.
    fn runes_until(&mut self, stop: &[char]) -> Result<(String, char), String> {
        let mut v = String::new();
        loop {
            match self.next() {
                None => return Err(v),
                Some(c) if stop.contains(&c) => return Ok((v, c)),
                Some('\\') => match self.next() {
                    None => return Err(v),
                    Some(n) => v.push(n),
                },
                Some(c) => v.push(c),
            }
        }
    }

    fn key(&mut self, data: &mut Mapping, level: usize) -> R<()> {
        match self.runes_until(&['=', '[', ',', '.']) {
            Err(k) if k.is_empty() => Err(Stop::Eof),
            Err(k) => fail(format!("key {k:?} has no value")),
            Ok((k, '[')) => {
                let i = self.key_index()?;
                let key = Value::String(k.clone());
                let list = match data.get(&key) {
                    None => Vec::new(),
                    Some(Value::Sequence(l)) => l.clone(),
                    Some(_) => return fail(format!("key {k:?} is not a list")),
                };
                let (list, res) = self.list_item(list, i, level);
                data.insert(key, Value::Sequence(list));
                res
            }
            Ok((k, '=')) => {
                let key = Value::String(k);
                match self.val_list() {
                    ListOr::List(l) => {
                        data.insert(key, Value::Sequence(l?));
                        Ok(())
                    }
                    ListOr::Eof => {
                        data.insert(key, Value::String(String::new()));
                        Err(Stop::Eof)
                    }
                    ListOr::NotList => {
                        let (v, eof) = self.val();
                        data.insert(key, typed_value(&v, self.as_string));
                        if eof {
                            Err(Stop::Eof)
                        } else {
                            Ok(())
                        }
                    }
                }
            }
            Ok((k, ',')) => fail(format!("key {k:?} has no value (cannot end with ,)")),
            Ok((k, _dot)) => {
                let level = level + 1;
                if level > MAX_NESTED_NAME_LEVEL {
                    return fail(format!(
                        "value name nested level is greater than maximum supported nested level of {MAX_NESTED_NAME_LEVEL}"
                    ));
                }
                let key = Value::String(k.clone());
                let mut inner = match data.get(&key) {
                    None => Mapping::new(),
                    Some(Value::Mapping(m)) => m.clone(),
                    Some(_) => return fail(format!("key {k:?} is not a map")),
                };
                let res = self.key(&mut inner, level);
                if res.is_ok() && inner.is_empty() {
                    return fail(format!("key map {k:?} has no value"));
                }
                if !inner.is_empty() {
                    data.insert(key, Value::Mapping(inner));
                }
                res
            }
        }
    }

    /// Reads `N]` after a `[`.
    fn key_index(&mut self) -> R<usize> {
        let s = match self.runes_until(&[']']) {
            Ok((s, _)) => s,
            Err(_) => return fail("error parsing index: unterminated ["),
        };
        let i: i64 = s
            .parse()
            .map_err(|_| Stop::Err(format!("error parsing index: {s:?} is not a number")))?;
        if i < 0 {
            return fail(format!("negative {i} index not allowed"));
        }
        let i = i as usize;
        if i > MAX_INDEX {
            return fail(format!(
                "index of {i} is greater than maximum supported index of {MAX_INDEX}"
            ));
        }
        Ok(i)
    }

    /// After `name[i]`: `=value`, `[j]...` (nested list) or `.key...` (map in the list).
    /// Returns the updated list even on error (as Helm keeps what was set).
    fn list_item(&mut self, mut list: Vec<Value>, i: usize, level: usize) -> (Vec<Value>, R<()>) {
        match self.runes_until(&['[', '.', '=']) {
            Ok((k, _)) | Err(k) if !k.is_empty() => {
                let msg = format!("unexpected data at end of array index: {k:?}");
                (list, fail(msg))
            }
            Err(_) => (list, Err(Stop::Eof)),
            Ok((_, '=')) => match self.val_list() {
                ListOr::List(Ok(l)) => {
                    set_index(&mut list, i, Value::Sequence(l));
                    (list, Ok(()))
                }
                ListOr::List(Err(e)) => (list, Err(e)),
                ListOr::Eof => {
                    set_index(&mut list, i, Value::String(String::new()));
                    (list, Ok(()))
                }
                ListOr::NotList => {
                    let (v, _) = self.val();
                    set_index(&mut list, i, typed_value(&v, self.as_string));
                    (list, Ok(()))
                }
            },
            Ok((_, '[')) => {
                let next_i = match self.key_index() {
                    Ok(n) => n,
                    Err(e) => return (list, Err(e)),
                };
                let current = match list.get(i) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Sequence(l)) => l.clone(),
                    Some(_) => return (list, fail(format!("index {i} is not a list"))),
                };
                let (inner, res) = self.list_item(current, next_i, level);
                set_index(&mut list, i, Value::Sequence(inner));
                (list, res)
            }
            Ok((_, _dot)) => {
                let mut inner = match list.get(i) {
                    Some(Value::Mapping(m)) => m.clone(),
                    // Indices out of order or a scalar there: start an empty map (as Helm).
                    _ => Mapping::new(),
                };
                let res = self.key(&mut inner, level);
                set_index(&mut list, i, Value::Mapping(inner));
                (list, res)
            }
        }
    }

    /// `{a,b,c}` after `=`, or tells that the value is not a list (nothing consumed).
    fn val_list(&mut self) -> ListOr {
        match self.next() {
            None => return ListOr::Eof,
            Some('{') => {}
            Some(_) => {
                self.unread();
                return ListOr::NotList;
            }
        }
        let mut list = Vec::new();
        loop {
            match self.runes_until(&[',', '}']) {
                Err(_) => {
                    return ListOr::List(fail("list must terminate with '}'"));
                }
                Ok((v, '}')) => {
                    // A ',' right after the list is consumed here.
                    match self.next() {
                        Some(',') | None => {}
                        Some(_) => self.unread(),
                    }
                    list.push(typed_value(&v, self.as_string));
                    return ListOr::List(Ok(list));
                }
                Ok((v, _comma)) => list.push(typed_value(&v, self.as_string)),
            }
        }
    }

    /// A plain value up to the next unescaped `,`; true when the input ended.
    fn val(&mut self) -> (String, bool) {
        match self.runes_until(&[',']) {
            Ok((v, _)) => (v, false),
            Err(v) => (v, true),
        }
    }
}

enum ListOr {
    List(R<Vec<Value>>),
    NotList,
    Eof,
}

fn set_index(list: &mut Vec<Value>, i: usize, v: Value) {
    if list.len() <= i {
        list.resize(i + 1, Value::Null);
    }
    list[i] = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Mapping {
        serde_yaml::from_str(s).expect("test YAML")
    }

    fn ok(arg: &str, want: &str) {
        let got = parse(arg, false).unwrap_or_else(|e| panic!("{arg}: {e}"));
        assert_eq!(got, y(want), "parsing {arg:?}");
    }

    fn err(arg: &str) -> String {
        match parse(arg, false) {
            Ok(v) => panic!("{arg:?} should fail, got {v:?}"),
            Err(e) => e.msg,
        }
    }

    #[test]
    fn scalars_and_typing() {
        ok("name1=value1", "name1: value1");
        ok("long_int_string=1234567890", "long_int_string: 1234567890");
        ok("boolean=true", "boolean: true");
        ok("boolean=FALSE", "boolean: false");
        ok("is_null=null", "is_null: null");
        ok("zero=0", "zero: 0");
        ok("leading_zeros=00009", "leading_zeros: '00009'");
        ok("negative=-3", "negative: -3");
        // Floats stay strings, as in Helm.
        ok("ratio=0.0025", "ratio: '0.0025'");
        ok("f=1.5", "f: '1.5'");
        ok("name1=one two three", "name1: one two three");
    }

    #[test]
    fn several_assignments_and_empty_values() {
        ok(
            "name1=value1,name2=value2",
            "{name1: value1, name2: value2}",
        );
        ok(
            "name1=value1,name2=value2,",
            "{name1: value1, name2: value2}",
        );
        ok("name1=,name2=value2", "{name1: '', name2: value2}");
        ok("name1=", "name1: ''");
        ok("a=1,a=2", "a: 2");
        assert!(err("name1,name2=").contains("has no value"));
        assert!(err("name1").contains("has no value"));
    }

    #[test]
    fn escapes() {
        ok(
            "name1=one\\,two,name2=three\\,four",
            "{name1: 'one,two', name2: 'three,four'}",
        );
        ok("name1=one\\=two", "name1: one=two");
        ok("name1=one\\\\two", "name1: 'one\\two'");
        ok(
            "nodeSelector.kubernetes\\.io/os=linux",
            "nodeSelector: {kubernetes.io/os: linux}",
        );
    }

    #[test]
    fn nested_maps() {
        ok("outer.inner=value", "outer: {inner: value}");
        ok(
            "outer.middle.inner=value",
            "outer: {middle: {inner: value}}",
        );
        ok(
            "outer.inner1=value,outer.inner2=value2",
            "outer: {inner1: value, inner2: value2}",
        );
        ok(
            "outer.inner1=value,outer.middle.inner=value",
            "outer: {inner1: value, middle: {inner: value}}",
        );
        assert!(err("name1.name2").contains("has no value"));
        assert!(err("name1.name2,name1.name3").contains("has no value"));
        assert!(err("a=1,a.b=2").contains("not a map"));
        let deep = format!("{}=1", vec!["a"; 32].join("."));
        assert!(err(&deep).contains("nested level"));
    }

    #[test]
    fn list_literals() {
        ok("name1={value1,value2}", "name1: [value1, value2]");
        ok(
            "name1={value1,value2},name2={value1,value2}",
            "{name1: [value1, value2], name2: [value1, value2]}",
        );
        ok("name1={1021,902}", "name1: [1021, 902]");
        ok(
            "name1.name2={value1,value2}",
            "name1: {name2: [value1, value2]}",
        );
        ok("name1={a\\,b,c}", "name1: ['a,b', c]");
        ok("name1={}", "name1: ['']");
        assert!(err("name1={value1,value2").contains("terminate"));
    }

    #[test]
    fn list_indices() {
        ok("list[0]=foo", "list: [foo]");
        ok("list[0].foo=bar", "list: [{foo: bar}]");
        ok(
            "list[0].foo=bar,list[0].hello=world",
            "list: [{foo: bar, hello: world}]",
        );
        ok("list[0]=foo,list[1]=bar", "list: [foo, bar]");
        ok("list[0]=foo,list[1]=bar,", "list: [foo, bar]");
        ok("list[0]=foo,list[3]=bar", "list: [foo, null, null, bar]");
        ok("list[0]={a,b}", "list: [[a, b]]");
        ok("noval[0]", "noval: []");
        ok("noval[0]=", "noval: ['']");
        ok("nested[0][0]=1", "nested: [[1]]");
        ok("nested[1][1]=1", "nested: [null, [null, 1]]");
        ok(
            "name1.name2[0].foo=bar,name1.name2[1].foo=bar",
            "name1: {name2: [{foo: bar}, {foo: bar}]}",
        );
        ok(
            "name1.name2[1].foo=bar,name1.name2[0].foo=bar",
            "name1: {name2: [{foo: bar}, {foo: bar}]}",
        );
        ok(
            "name1.name2[1].foo=bar",
            "name1: {name2: [null, {foo: bar}]}",
        );
        assert!(err("list[0].foo=bar,list[-30].hello=world").contains("negative"));
        assert!(err("illegal[0]name.foo=bar").contains("unexpected data at end of array index"));
        assert!(err("list[x]=1").contains("not a number"));
        assert!(err("list[70000]=1").contains("maximum supported index"));
        assert!(err("a=1,a[0]=2").contains("not a list"));
    }

    #[test]
    fn set_string_keeps_strings() {
        let got = parse("a=true,b=1,c=null,d={1,x}", true).expect("parses");
        assert_eq!(got, y("{a: 'true', b: '1', c: 'null', d: ['1', x]}"));
    }
}
