//! Continuity checker: reads the workload's records in order (the output of the run before a
//! migration followed by the output after it) and says whether the job continued exactly where
//! it stopped: no missing or repeated tick, the same PID, the same memory checksum, a file offset
//! that keeps growing with the bytes written, a live echo child, a clock that never went back.

use crate::record::{ParseError, Record};

/// What a continuity check found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Break {
    /// A line is not a workload record.
    #[error("line {line}: {source}")]
    Unparseable {
        /// 1-based line number.
        line: usize,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// Ticks were skipped.
    #[error("gap: tick {got} follows tick {prev}")]
    Gap {
        /// Previous tick.
        prev: u64,
        /// This tick.
        got: u64,
    },
    /// A tick was printed again (the job went back in time).
    #[error("repeat: tick {got} follows tick {prev}")]
    Repeat {
        /// Previous tick.
        prev: u64,
        /// This tick.
        got: u64,
    },
    /// The PID inside the job's namespace changed.
    #[error("pid changed from {from} to {to} at tick {tick}")]
    PidChanged {
        /// PID before.
        from: i32,
        /// PID after.
        to: i32,
        /// Tick where it was seen.
        tick: u64,
    },
    /// The memory checksum changed.
    #[error("memory checksum changed from {from} to {to} at tick {tick}")]
    ChecksumChanged {
        /// Checksum before.
        from: String,
        /// Checksum after.
        to: String,
        /// Tick where it was seen.
        tick: u64,
    },
    /// The memory size changed.
    #[error("memory size changed from {from} MiB to {to} MiB at tick {tick}")]
    MemoryChanged {
        /// MiB before.
        from: u64,
        /// MiB after.
        to: u64,
        /// Tick where it was seen.
        tick: u64,
    },
    /// The tick file's offset is not where the bytes written put it, or bytes written went back.
    #[error(
        "file offset {file_off:?} after {written} bytes written (previously {prev_written}) at tick {tick}"
    )]
    FileOffset {
        /// Offset reported.
        file_off: Option<u64>,
        /// Bytes written reported.
        written: u64,
        /// Bytes written on the previous tick.
        prev_written: u64,
        /// Tick where it was seen.
        tick: u64,
    },
    /// The echo child stopped answering.
    #[error("echo child {state:?} at tick {tick}")]
    ChildLost {
        /// What the workload said.
        state: String,
        /// Tick where it was seen.
        tick: u64,
    },
    /// CLOCK_MONOTONIC went backwards.
    #[error("monotonic clock went back from {prev_ms} ms to {got_ms} ms at tick {tick}")]
    ClockWentBack {
        /// Uptime before.
        prev_ms: u64,
        /// Uptime after.
        got_ms: u64,
        /// Tick where it was seen.
        tick: u64,
    },
    /// A second start line: the job was restarted, not restored.
    #[error("the workload started again (pid {pid}) after tick {after_tick}")]
    Restarted {
        /// PID of the new start.
        pid: i32,
        /// Last tick before it.
        after_tick: u64,
    },
}

/// What the records showed, for people.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// First tick seen.
    pub first_tick: Option<u64>,
    /// Last tick seen.
    pub last_tick: Option<u64>,
    /// PID inside the job's namespace.
    pub pid: Option<i32>,
    /// Memory checksum (from the start line or the first verified tick).
    pub sum: Option<String>,
    /// How many ticks carried a verified checksum.
    pub verified_ticks: u64,
    /// MiB of memory.
    pub mem_mib: Option<u64>,
    /// Last file offset.
    pub file_off: Option<u64>,
    /// Last uptime in ms.
    pub up_ms: Option<u64>,
    /// Signals received, by name, in order.
    pub signals: Vec<String>,
    /// Exit code, if the workload said it exits.
    pub exit: Option<i32>,
}

/// Incremental checker; feed it records in the order they were printed.
#[derive(Clone, Debug, Default)]
pub struct Continuity {
    summary: Summary,
    prev_written: u64,
}

impl Continuity {
    /// A checker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was seen so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn check_pid(&mut self, pid: i32, tick: u64) -> Result<(), Break> {
        match self.summary.pid {
            Some(from) if from != pid => Err(Break::PidChanged {
                from,
                to: pid,
                tick,
            }),
            _ => {
                self.summary.pid = Some(pid);
                Ok(())
            }
        }
    }

    fn check_sum(&mut self, sum: &str, tick: u64) -> Result<(), Break> {
        match &self.summary.sum {
            Some(from) if from != sum => Err(Break::ChecksumChanged {
                from: from.clone(),
                to: sum.to_string(),
                tick,
            }),
            _ => {
                self.summary.sum = Some(sum.to_string());
                Ok(())
            }
        }
    }

    fn check_mem(&mut self, mib: u64, tick: u64) -> Result<(), Break> {
        match self.summary.mem_mib {
            Some(from) if from != mib => Err(Break::MemoryChanged {
                from,
                to: mib,
                tick,
            }),
            _ => {
                self.summary.mem_mib = Some(mib);
                Ok(())
            }
        }
    }

    /// Checks one record against everything seen before it.
    pub fn observe(&mut self, record: &Record) -> Result<(), Break> {
        match record {
            Record::Start(s) => {
                if let Some(after_tick) = self.summary.last_tick {
                    return Err(Break::Restarted {
                        pid: s.pid,
                        after_tick,
                    });
                }
                self.check_pid(s.pid, 0)?;
                self.check_mem(s.mem_mib, 0)?;
                self.check_sum(&s.sum, 0)?;
            }
            Record::Tick(t) => {
                if let Some(prev) = self.summary.last_tick {
                    if t.tick <= prev {
                        return Err(Break::Repeat { prev, got: t.tick });
                    }
                    if t.tick != prev + 1 {
                        return Err(Break::Gap { prev, got: t.tick });
                    }
                }
                self.check_pid(t.pid, t.tick)?;
                self.check_mem(t.mem_mib, t.tick)?;
                if let Some(sum) = &t.sum {
                    self.check_sum(sum, t.tick)?;
                    self.summary.verified_ticks += 1;
                }
                let offset_ok = match t.file_off {
                    Some(off) => off == t.written,
                    None => t.written == 0,
                };
                let grew = t.written > self.prev_written || t.file_off.is_none();
                if !offset_ok || !grew {
                    return Err(Break::FileOffset {
                        file_off: t.file_off,
                        written: t.written,
                        prev_written: self.prev_written,
                        tick: t.tick,
                    });
                }
                if t.child != "ok" && t.child != "none" {
                    return Err(Break::ChildLost {
                        state: t.child.clone(),
                        tick: t.tick,
                    });
                }
                if let Some(prev_ms) = self.summary.up_ms
                    && t.up_ms < prev_ms
                {
                    return Err(Break::ClockWentBack {
                        prev_ms,
                        got_ms: t.up_ms,
                        tick: t.tick,
                    });
                }
                self.prev_written = t.written;
                self.summary.first_tick.get_or_insert(t.tick);
                self.summary.last_tick = Some(t.tick);
                self.summary.file_off = t.file_off;
                self.summary.up_ms = Some(t.up_ms);
            }
            Record::Signal(s) => {
                self.check_pid(s.pid, s.tick)?;
                self.summary.signals.push(s.name.clone());
            }
            Record::Exit(e) => {
                self.check_pid(e.pid, e.tick)?;
                self.summary.exit = Some(e.code);
            }
        }
        Ok(())
    }

    /// Parses and checks every non-empty line of `text`.
    pub fn observe_text(&mut self, text: &str) -> Result<(), Break> {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = line.parse().map_err(|source| Break::Unparseable {
                line: i + 1,
                source,
            })?;
            self.observe(&record)?;
        }
        Ok(())
    }
}

/// Checks a whole output (e.g. before-migration output followed by after-migration output).
pub fn check_text(text: &str) -> Result<Summary, Break> {
    let mut c = Continuity::new();
    c.observe_text(text)?;
    Ok(c.summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TickRecord;

    const SUM: &str = "3f1c0a9e5b7d2c41";

    fn tick(n: u64) -> TickRecord {
        TickRecord {
            tick: n,
            pid: 1,
            mem_mib: 64,
            sum: n.is_multiple_of(5).then(|| SUM.to_string()),
            written: 10 * n,
            file_off: Some(10 * n),
            child: "ok".into(),
            up_ms: 100 * n,
        }
    }

    fn text(ticks: impl IntoIterator<Item = TickRecord>) -> String {
        let mut out = format!("start=1 pid=1 mem_mib=64 sum={SUM} child_pid=2\n");
        for t in ticks {
            out.push_str(&Record::Tick(t).to_string());
            out.push('\n');
        }
        out
    }

    /// A clean run across a migration (ticks 1..=20, a signal in between, an exit) passes and
    /// its summary says what happened; otherwise the demo reports false failures.
    #[test]
    fn continuous_output_passes() {
        let mut out = text((1..=10).map(tick));
        out.push_str("signal=SIGUSR1 signo=10 tick=10 count=1 pid=1\n");
        let after = text((11..=20).map(tick));
        out.push_str(after.split_once('\n').unwrap().1);
        out.push_str("exit=7 reason=tick tick=20 pid=1\n");
        let s = check_text(&out).unwrap();
        assert_eq!(s.first_tick, Some(1));
        assert_eq!(s.last_tick, Some(20));
        assert_eq!(s.pid, Some(1));
        assert_eq!(s.sum.as_deref(), Some(SUM));
        assert_eq!(s.verified_ticks, 4);
        assert_eq!(s.file_off, Some(200));
        assert_eq!(s.signals, vec!["SIGUSR1".to_string()]);
        assert_eq!(s.exit, Some(7));
    }

    /// A lost tick (the restored job did not continue where the dump stopped it) is a gap.
    #[test]
    fn gap_is_caught() {
        let out = text((1..=5).chain(7..=9).map(tick));
        assert_eq!(check_text(&out), Err(Break::Gap { prev: 5, got: 7 }));
    }

    /// A tick printed twice (the job was restored from an older image) is a repeat.
    #[test]
    fn repeat_is_caught() {
        let out = text((1..=5).chain(5..=6).map(tick));
        assert_eq!(check_text(&out), Err(Break::Repeat { prev: 5, got: 5 }));
        let out = text((1..=5).chain(3..=6).map(tick));
        assert_eq!(check_text(&out), Err(Break::Repeat { prev: 5, got: 3 }));
    }

    /// A different PID inside the job's namespace after restore means the PID was not kept.
    #[test]
    fn changed_pid_is_caught() {
        let out = text((1..=6).map(|n| TickRecord {
            pid: if n > 4 { 7 } else { 1 },
            ..tick(n)
        }));
        assert_eq!(
            check_text(&out),
            Err(Break::PidChanged {
                from: 1,
                to: 7,
                tick: 5
            })
        );
    }

    /// A different memory checksum means memory was lost or corrupted in the migration.
    #[test]
    fn changed_checksum_is_caught() {
        let out = text((1..=10).map(|n| TickRecord {
            sum: if n == 10 {
                Some("deadbeefdeadbeef".into())
            } else {
                tick(n).sum
            },
            ..tick(n)
        }));
        assert_eq!(
            check_text(&out),
            Err(Break::ChecksumChanged {
                from: SUM.into(),
                to: "deadbeefdeadbeef".into(),
                tick: 10
            })
        );
    }

    /// A file reopened at offset 0 (or an offset that disagrees with the bytes written) means
    /// the open fd's offset was not carried over.
    #[test]
    fn broken_file_offset_is_caught() {
        let out = text((1..=4).map(|n| TickRecord {
            file_off: if n == 4 { Some(10) } else { Some(10 * n) },
            ..tick(n)
        }));
        assert!(matches!(
            check_text(&out),
            Err(Break::FileOffset { tick: 4, .. })
        ));
    }

    /// A dead echo child, a clock going back and a restart are continuity breaks too.
    #[test]
    fn child_clock_and_restart_are_caught() {
        let dead = text((1..=3).map(|n| TickRecord {
            child: if n == 3 { "eof".into() } else { "ok".into() },
            ..tick(n)
        }));
        assert!(matches!(
            check_text(&dead),
            Err(Break::ChildLost { tick: 3, .. })
        ));
        let clock = text((1..=3).map(|n| TickRecord {
            up_ms: if n == 3 { 5 } else { 100 * n },
            ..tick(n)
        }));
        assert!(matches!(
            check_text(&clock),
            Err(Break::ClockWentBack { tick: 3, .. })
        ));
        let restarted = format!("{}{}", text((1..=3).map(tick)), text((1..=2).map(tick)));
        assert_eq!(
            check_text(&restarted),
            Err(Break::Restarted {
                pid: 1,
                after_tick: 3
            })
        );
    }

    /// Junk in the output is reported with its line number rather than skipped.
    #[test]
    fn junk_is_reported() {
        let out = format!("{}garbage\n", text((1..=2).map(tick)));
        assert!(matches!(
            check_text(&out),
            Err(Break::Unparseable { line: 4, .. })
        ));
    }
}
