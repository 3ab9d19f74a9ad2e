//! The demo workload's output format: one machine-parseable line per event, written by
//! `lodger-workload` to stdout and read back by the demo, the benchmark and the engine's tests.
//!
//! Every line is a list of space-separated `key=value` tokens; the first key names the kind of
//! line:
//!
//! ```text
//! start=1 pid=1 mem_mib=256 sum=3f1c0a9e5b7d2c41 child_pid=2
//! tick=12 pid=1 mem_mib=256 sum=3f1c0a9e5b7d2c41 written=228 file_off=228 child=ok up_ms=1203
//! tick=13 pid=1 mem_mib=256 sum=- written=247 file_off=247 child=ok up_ms=1304
//! signal=SIGUSR1 signo=10 tick=13 count=1 pid=1
//! exit=7 reason=tick tick=20 pid=1
//! ```
//!
//! `sum` is the first 16 hex digits of the SHA-256 of the workload's memory, present (not `-`) on
//! the ticks where the workload verified it; `written` is the number of bytes the workload wrote
//! to its tick file and `file_off` the offset of its long-lived fd (`-` without a tick file);
//! `child` is `ok` when the forked child echoed this tick's ping, `none` without a child, or a
//! word saying what went wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The start line: printed once, after the memory is filled and its checksum known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRecord {
    /// PID as seen in the workload's own PID namespace.
    pub pid: i32,
    /// MiB of memory held.
    pub mem_mib: u64,
    /// Checksum of the memory right after it was filled.
    pub sum: String,
    /// PID of the echo child, when one was forked.
    pub child_pid: Option<i32>,
}

/// One line per tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickRecord {
    /// The counter, from 1.
    pub tick: u64,
    /// PID as seen in the workload's own PID namespace.
    pub pid: i32,
    /// MiB of memory held.
    pub mem_mib: u64,
    /// Checksum of the memory when verified on this tick.
    pub sum: Option<String>,
    /// Bytes written to the tick file so far (0 without one).
    pub written: u64,
    /// Offset of the tick file's fd after this tick's write.
    pub file_off: Option<u64>,
    /// State of the echo child: `ok`, `none`, or what went wrong.
    pub child: String,
    /// Milliseconds of CLOCK_MONOTONIC since the workload started.
    pub up_ms: u64,
}

/// A signal the workload received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalRecord {
    /// Name, e.g. `SIGUSR1`.
    pub name: String,
    /// Number.
    pub signo: i32,
    /// Tick during which it arrived (the last tick printed).
    pub tick: u64,
    /// How many signals the workload has received so far, this one included.
    pub count: u64,
    /// PID as seen in the workload's own PID namespace.
    pub pid: i32,
}

/// The last line before the workload exits on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit code.
    pub code: i32,
    /// Why: `tick` (the requested tick was reached), `signal` (SIGTERM/SIGINT) or `corrupt`
    /// (the memory checksum changed).
    pub reason: String,
    /// Last tick printed.
    pub tick: u64,
    /// PID as seen in the workload's own PID namespace.
    pub pid: i32,
}

/// Any line of the workload's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `start=1 ...`
    Start(StartRecord),
    /// `tick=N ...`
    Tick(TickRecord),
    /// `signal=NAME ...`
    Signal(SignalRecord),
    /// `exit=CODE ...`
    Exit(ExitRecord),
}

/// Why a line is not a workload record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Empty line.
    #[error("failed to parse an empty line")]
    Empty,
    /// A token without `=`.
    #[error("failed to parse token {0:?}: expected key=value")]
    Token(String),
    /// The first key is not a known kind.
    #[error("failed to parse line kind {0:?}")]
    Kind(String),
    /// A required key is absent.
    #[error("failed to find key {0:?}")]
    Missing(&'static str),
    /// A value does not parse.
    #[error("failed to parse {key}={value:?}")]
    Value {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
    },
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "-".to_string(),
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Start(s) => write!(
                f,
                "start=1 pid={} mem_mib={} sum={} child_pid={}",
                s.pid,
                s.mem_mib,
                s.sum,
                opt(&s.child_pid)
            ),
            Record::Tick(t) => write!(
                f,
                "tick={} pid={} mem_mib={} sum={} written={} file_off={} child={} up_ms={}",
                t.tick,
                t.pid,
                t.mem_mib,
                opt(&t.sum),
                t.written,
                opt(&t.file_off),
                t.child,
                t.up_ms
            ),
            Record::Signal(s) => write!(
                f,
                "signal={} signo={} tick={} count={} pid={}",
                s.name, s.signo, s.tick, s.count, s.pid
            ),
            Record::Exit(e) => write!(
                f,
                "exit={} reason={} tick={} pid={}",
                e.code, e.reason, e.tick, e.pid
            ),
        }
    }
}

struct Fields<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> Fields<'a> {
    fn str(&self, key: &'static str) -> Result<&'a str, ParseError> {
        self.0.get(key).copied().ok_or(ParseError::Missing(key))
    }

    fn num<T: FromStr>(&self, key: &'static str) -> Result<T, ParseError> {
        let value = self.str(key)?;
        value.parse().map_err(|_| ParseError::Value {
            key,
            value: value.to_string(),
        })
    }

    fn opt_num<T: FromStr>(&self, key: &'static str) -> Result<Option<T>, ParseError> {
        match self.str(key)? {
            "-" => Ok(None),
            _ => self.num(key).map(Some),
        }
    }

    fn opt_str(&self, key: &'static str) -> Result<Option<String>, ParseError> {
        match self.str(key)? {
            "-" => Ok(None),
            s => Ok(Some(s.to_string())),
        }
    }
}

impl FromStr for Record {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let mut tokens = line.split_ascii_whitespace().peekable();
        let first = tokens.peek().copied().ok_or(ParseError::Empty)?;
        let kind = first
            .split_once('=')
            .ok_or_else(|| ParseError::Token(first.to_string()))?
            .0;
        let mut map = BTreeMap::new();
        for token in tokens {
            let (k, v) = token
                .split_once('=')
                .ok_or_else(|| ParseError::Token(token.to_string()))?;
            map.insert(k, v);
        }
        let f = Fields(map);
        Ok(match kind {
            "start" => Record::Start(StartRecord {
                pid: f.num("pid")?,
                mem_mib: f.num("mem_mib")?,
                sum: f.str("sum")?.to_string(),
                child_pid: f.opt_num("child_pid")?,
            }),
            "tick" => Record::Tick(TickRecord {
                tick: f.num("tick")?,
                pid: f.num("pid")?,
                mem_mib: f.num("mem_mib")?,
                sum: f.opt_str("sum")?,
                written: f.num("written")?,
                file_off: f.opt_num("file_off")?,
                child: f.str("child")?.to_string(),
                up_ms: f.num("up_ms")?,
            }),
            "signal" => Record::Signal(SignalRecord {
                name: f.str("signal")?.to_string(),
                signo: f.num("signo")?,
                tick: f.num("tick")?,
                count: f.num("count")?,
                pid: f.num("pid")?,
            }),
            "exit" => Record::Exit(ExitRecord {
                code: f.num("exit")?,
                reason: f.str("reason")?.to_string(),
                tick: f.num("tick")?,
                pid: f.num("pid")?,
            }),
            other => return Err(ParseError::Kind(other.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick() -> TickRecord {
        TickRecord {
            tick: 12,
            pid: 1,
            mem_mib: 256,
            sum: Some("3f1c0a9e5b7d2c41".into()),
            written: 228,
            file_off: Some(228),
            child: "ok".into(),
            up_ms: 1203,
        }
    }

    /// Every record kind survives print → parse unchanged; if not, the demo and the engine's
    /// tests misread the workload and cannot judge continuity.
    #[test]
    fn records_round_trip() {
        let records = [
            Record::Start(StartRecord {
                pid: 1,
                mem_mib: 64,
                sum: "00ff".into(),
                child_pid: None,
            }),
            Record::Tick(tick()),
            Record::Tick(TickRecord {
                sum: None,
                file_off: None,
                child: "none".into(),
                ..tick()
            }),
            Record::Signal(SignalRecord {
                name: "SIGUSR1".into(),
                signo: 10,
                tick: 3,
                count: 1,
                pid: 1,
            }),
            Record::Exit(ExitRecord {
                code: 7,
                reason: "tick".into(),
                tick: 20,
                pid: 1,
            }),
        ];
        for r in records {
            let line = r.to_string();
            assert_eq!(line.parse::<Record>(), Ok(r), "line {line:?}");
        }
    }

    /// The documented example line parses to the documented values (the format is a contract
    /// with the engine's tests).
    #[test]
    fn documented_tick_line_parses() {
        let r: Record =
            "tick=12 pid=1 mem_mib=256 sum=3f1c0a9e5b7d2c41 written=228 file_off=228 child=ok up_ms=1203"
                .parse()
                .unwrap();
        assert_eq!(r, Record::Tick(tick()));
    }

    /// Malformed lines are errors, never half-filled records.
    #[test]
    fn malformed_lines_are_rejected() {
        assert_eq!("".parse::<Record>(), Err(ParseError::Empty));
        assert_eq!(
            "hello world".parse::<Record>(),
            Err(ParseError::Token("hello".into()))
        );
        assert_eq!(
            "bogus=1".parse::<Record>(),
            Err(ParseError::Kind("bogus".into()))
        );
        assert_eq!(
            "tick=1 pid=1".parse::<Record>(),
            Err(ParseError::Missing("mem_mib"))
        );
        assert!(matches!(
            "tick=x pid=1 mem_mib=1 sum=- written=0 file_off=- child=none up_ms=0"
                .parse::<Record>(),
            Err(ParseError::Value { key: "tick", .. })
        ));
    }
}
