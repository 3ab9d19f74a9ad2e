//! evdev input: the owner's keyboard, mouse and touchpad.
//!
//! Reads `struct input_event` records from `/dev/input/event*` (the host's, mounted into the
//! agent): on x86_64 each is 24 bytes, `struct timeval` (two `i64`), `type: u16`, `code: u16`,
//! `value: i32`, native endian. Any key/button (`EV_KEY`), relative motion (`EV_REL`) or absolute
//! motion (`EV_ABS`) means the owner is at the machine; `EV_SYN` and `EV_MSC` frame and annotate
//! those and never count alone. The record's own timestamp is not used: the moment the agent
//! reads it is what goes into the [`ActivityMark`] (the kernel's clock id for evdev timestamps is
//! per client and not worth depending on).
//!
//! Devices come and go (USB): [`watch_devices`] rescans the directory and starts a reader per new
//! device; a reader ends when its device disappears (`ENODEV`) or reaches end of file. Devices
//! whose sysfs capabilities show none of the counted event types (lid switches, power buttons
//! are `EV_KEY` and do count) or that are accelerometers (`INPUT_PROP_ACCELEROMETER`: a laptop on
//! a desk still reports tiny motions) are skipped.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{ActivityMark, Clock};

/// Size of one `struct input_event` on 64-bit Linux.
pub const EVENT_SIZE: usize = 24;
/// Synchronisation marker between event packets.
pub const EV_SYN: u16 = 0x00;
/// Keys and buttons.
pub const EV_KEY: u16 = 0x01;
/// Relative axes (mouse motion, wheels).
pub const EV_REL: u16 = 0x02;
/// Absolute axes (touchpads, tablets, touchscreens).
pub const EV_ABS: u16 = 0x03;
/// Miscellaneous data (scan codes) that always accompanies real events.
pub const EV_MSC: u16 = 0x04;
/// `INPUT_PROP_ACCELEROMETER` bit in a device's property bitmap.
const INPUT_PROP_ACCELEROMETER: u32 = 0x06;

/// Errors of the evdev source.
#[derive(Debug, thiserror::Error)]
pub enum EvdevError {
    /// Opening a device failed.
    #[error("failed to open input device {path}: {source}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a device failed (other than it going away).
    #[error("failed to read input device {path}: {source}")]
    Read {
        /// The device path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Listing the input directory failed.
    #[error("failed to list input devices in {dir}: {source}")]
    List {
        /// The directory.
        dir: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl EvdevError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            EvdevError::Open { .. } => "evdev_open",
            EvdevError::Read { .. } => "evdev_read",
            EvdevError::List { .. } => "evdev_list",
        }
    }
}

/// One decoded `struct input_event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    /// `time.tv_sec`.
    pub sec: i64,
    /// `time.tv_usec`.
    pub usec: i64,
    /// `type` (`EV_*`).
    pub kind: u16,
    /// `code` (`KEY_*`, `REL_*`, ...).
    pub code: u16,
    /// `value` (1 press, 0 release, 2 repeat; or a motion delta/position).
    pub value: i32,
}

impl InputEvent {
    /// Decodes one native-endian record.
    pub fn from_bytes(b: &[u8; EVENT_SIZE]) -> Self {
        // NB: the slices below have fixed, in-bounds lengths, so the conversions cannot fail.
        let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Self {
            sec: i64_at(0),
            usec: i64_at(8),
            kind: u16_at(16),
            code: u16_at(18),
            value: i32::from_ne_bytes(b[20..24].try_into().expect("4 bytes")),
        }
    }

    /// Encodes the record as the kernel would (tests and tools write these into pipes).
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[0..8].copy_from_slice(&self.sec.to_ne_bytes());
        b[8..16].copy_from_slice(&self.usec.to_ne_bytes());
        b[16..18].copy_from_slice(&self.kind.to_ne_bytes());
        b[18..20].copy_from_slice(&self.code.to_ne_bytes());
        b[20..24].copy_from_slice(&self.value.to_ne_bytes());
        b
    }

    /// True for records that show a person at the machine: a key or button, or motion.
    pub fn is_owner_activity(&self) -> bool {
        matches!(self.kind, EV_KEY | EV_REL | EV_ABS)
    }
}

/// Splits a byte stream into records, keeping a partial record until the rest arrives (a pipe
/// may deliver any split; an evdev device delivers whole records only).
#[derive(Debug, Default)]
pub struct EventDecoder {
    partial: Vec<u8>,
}

impl EventDecoder {
    /// Decodes every whole record in `partial + bytes`; keeps the remainder.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<InputEvent> {
        self.partial.extend_from_slice(bytes);
        let whole = self.partial.len() / EVENT_SIZE * EVENT_SIZE;
        let events = self.partial[..whole]
            .chunks_exact(EVENT_SIZE)
            .map(|c| InputEvent::from_bytes(c.try_into().expect("chunks_exact yields 24 bytes")))
            .collect();
        self.partial.drain(..whole);
        events
    }

    /// Bytes of an incomplete record waiting for the rest.
    pub fn pending_bytes(&self) -> usize {
        self.partial.len()
    }
}

/// How a reader ended.
#[derive(Debug, PartialEq, Eq)]
pub struct ReaderEnd {
    /// Records decoded in total.
    pub events: u64,
    /// Records that counted as owner activity.
    pub activity: u64,
    /// Bytes of a truncated record left at end of file (dropped, never counted).
    pub truncated_bytes: usize,
}

/// Reads records from `reader` (blocking) until end of file or until the device goes away,
/// recording owner activity in `mark` at the agent's time of reading.
///
/// After a read that showed activity it sleeps `coalesce` before reading again, so a mouse
/// reporting at 125-1000 Hz costs one wake-up per `coalesce`, not one per report. The first sign
/// of the owner is still seen at once; what arrives meanwhile waits in the device's buffer (the
/// kernel drops the oldest records with `SYN_DROPPED` if it overflows, which loses nothing the
/// agent needs: it only wants "input happened").
///
/// NB: blocking reads on a thread of their own, not the async reactor: while the thread sleeps
/// nothing wakes the process, whereas an fd registered with the reactor wakes it on every
/// report even when nobody reads (measured: ~170 reactor wake-ups per second for a 125 Hz mouse).
pub fn read_events<R: Read>(
    mut reader: R,
    path: &Path,
    clock: Clock,
    mark: &ActivityMark,
    coalesce: Duration,
) -> Result<ReaderEnd, EvdevError> {
    let mut decoder = EventDecoder::default();
    // Large enough that one read after a coalescing pause drains what piled up meanwhile.
    let mut buf = vec![0u8; EVENT_SIZE * 1024];
    let (mut events, mut activity) = (0u64, 0u64);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The device was unplugged.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => 0,
            Err(source) => {
                return Err(EvdevError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if n == 0 {
            return Ok(ReaderEnd {
                events,
                activity,
                truncated_bytes: decoder.pending_bytes(),
            });
        }
        let decoded = decoder.feed(&buf[..n]);
        events += decoded.len() as u64;
        let active = decoded.iter().filter(|e| e.is_owner_activity()).count() as u64;
        if active > 0 {
            activity += active;
            mark.record(clock.now());
            if !coalesce.is_zero() {
                std::thread::sleep(coalesce);
            }
        }
    }
}

/// Opens an input device (or a FIFO standing in for one) for blocking reads.
pub fn open_device(path: &Path) -> Result<File, EvdevError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| EvdevError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Parses a sysfs bitmap (`capabilities/ev`, `properties`): hex words separated by spaces,
/// most significant first. Returns whether `bit` is set.
pub fn bitmap_has(text: &str, bit: u32) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    // Each word is an unsigned long: 64 bits on the platforms Lodger supports.
    let (index, offset) = ((bit / 64) as usize, bit % 64);
    words
        .len()
        .checked_sub(index + 1)
        .and_then(|i| u64::from_str_radix(words[i], 16).ok())
        .is_some_and(|w| w & (1u64 << offset) != 0)
}

/// Whether the device `eventN` looks like a keyboard, mouse or touchpad, judged from
/// `<sys_input>/eventN/device/{capabilities/ev,properties}`. Where sysfs cannot be read the
/// device is watched anyway (a record it sends is still judged one by one).
pub fn is_human_input(sys_input: &Path, event_name: &str) -> bool {
    let dev = sys_input.join(event_name).join("device");
    let Ok(ev) = std::fs::read_to_string(dev.join("capabilities/ev")) else {
        return true;
    };
    let counts = [EV_KEY, EV_REL, EV_ABS]
        .iter()
        .any(|t| bitmap_has(&ev, u32::from(*t)));
    let accelerometer = std::fs::read_to_string(dev.join("properties"))
        .is_ok_and(|p| bitmap_has(&p, INPUT_PROP_ACCELEROMETER));
    counts && !accelerometer
}

/// Lists `<dir>/event*`, sorted.
pub fn list_devices(dir: &Path) -> Result<Vec<PathBuf>, EvdevError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EvdevError::List {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Where to look for devices and how often.
#[derive(Clone, Debug)]
pub struct EvdevConfig {
    /// Directory of the device nodes (`/dev/input`, or the host's mounted elsewhere).
    pub input_dir: PathBuf,
    /// sysfs input class directory (`/sys/class/input`).
    pub sys_input_dir: PathBuf,
    /// How often to look for new devices.
    pub rescan: Duration,
    /// Pause after a read that showed activity (see [`read_events`]).
    pub coalesce: Duration,
}

/// Watches every human input device, forever: rescans `input_dir` every `rescan`, starts one
/// reader thread per new device and forgets devices whose reader ended (so a replugged device
/// is read again). Says once when there are no devices to watch.
pub async fn watch_devices(config: EvdevConfig, clock: Clock, mark: Arc<ActivityMark>) {
    let mut watching: HashSet<PathBuf> = HashSet::new();
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut said_none = false;
    let mut ticker = tokio::time::interval(config.rescan);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(path) = ended_rx.recv() => {
                watching.remove(&path);
                continue;
            }
        }
        let devices = match list_devices(&config.input_dir) {
            Ok(d) => d,
            Err(e) => {
                if !said_none {
                    tracing::info!(error = %e, "no input devices to watch: idleness comes from terminals, logind and load only");
                    said_none = true;
                }
                continue;
            }
        };
        let human: Vec<PathBuf> = devices
            .into_iter()
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                name.is_some_and(|n| is_human_input(&config.sys_input_dir, &n))
            })
            .collect();
        if human.is_empty() && watching.is_empty() && !said_none {
            tracing::info!(dir = %config.input_dir.display(), "no keyboard, mouse or touchpad found: idleness comes from terminals, logind and load only");
            said_none = true;
        }
        for path in human {
            if watching.contains(&path) {
                continue;
            }
            let (mark, ended_tx, coalesce, thread_path) = (
                mark.clone(),
                ended_tx.clone(),
                config.coalesce,
                path.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("evdev".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    // NB: opened on the reader's thread: a FIFO standing in for a device (tests,
                    // the benchmark) blocks in open() until its writer appears; evdev nodes never
                    // block here.
                    let result = open_device(&thread_path).and_then(|file| {
                        tracing::info!(device = %thread_path.display(), "watching input device");
                        read_events(file, &thread_path, clock, &mark, coalesce)
                    });
                    match result {
                        Ok(end) => tracing::info!(device = %thread_path.display(), events = end.events, "input device went away"),
                        Err(e) => tracing::debug!(error = %e, category = e.category(), "input device reader stopped"),
                    }
                    let _ = ended_tx.send(thread_path);
                });
            match spawned {
                Ok(_) => {
                    said_none = false;
                    watching.insert(path);
                }
                Err(e) => tracing::warn!(error = %e, "cannot start an input reader thread"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    fn ev(kind: u16, code: u16, value: i32) -> InputEvent {
        InputEvent {
            sec: 1_700_000_000,
            usec: 123_456,
            kind,
            code,
            value,
        }
    }

    /// A real pipe: its read end as the agent's reader, its write end as a `File`.
    fn pipe_pair() -> (File, File) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (File::from(r), File::from(w))
    }

    /// If this fails, records are decoded with the wrong layout (offsets of type/code/value), and
    /// every later test of the source means nothing.
    #[test]
    fn record_layout_round_trips() {
        let e = ev(EV_KEY, 30, 1);
        let b = e.to_bytes();
        assert_eq!(&b[16..18], &EV_KEY.to_ne_bytes());
        assert_eq!(&b[18..20], &30u16.to_ne_bytes());
        assert_eq!(InputEvent::from_bytes(&b), e);
    }

    /// If this fails, a key press written into a real pipe in arbitrary pieces would not mark
    /// the owner active (the decoder loses partial records).
    #[test]
    fn key_press_through_a_pipe_marks_activity() {
        let (reader, mut writer) = pipe_pair();
        let mark = ActivityMark::new(Arc::new(Notify::new()));
        let clock = Clock::new();
        let mut bytes = Vec::new();
        for e in [ev(EV_MSC, 4, 30), ev(EV_KEY, 30, 1), ev(EV_SYN, 0, 0)] {
            bytes.extend_from_slice(&e.to_bytes());
        }
        // Split mid-record on purpose.
        writer.write_all(&bytes[..30]).unwrap();
        writer.write_all(&bytes[30..]).unwrap();
        drop(writer);
        let end = read_events(reader, Path::new("pipe"), clock, &mark, Duration::ZERO).unwrap();
        assert_eq!(
            end,
            ReaderEnd {
                events: 3,
                activity: 1,
                truncated_bytes: 0
            }
        );
        assert!(mark.last().is_some());
    }

    /// If this fails, mouse motion (EV_REL) or touchpad motion (EV_ABS) would not count as the
    /// owner being at the machine.
    #[test]
    fn mouse_and_touchpad_motion_count() {
        let (reader, mut writer) = pipe_pair();
        let mark = ActivityMark::new(Arc::new(Notify::new()));
        for e in [
            ev(EV_REL, 0, -3),
            ev(EV_REL, 1, 2),
            ev(EV_SYN, 0, 0),
            ev(EV_ABS, 53, 812),
            ev(EV_SYN, 0, 0),
        ] {
            writer.write_all(&e.to_bytes()).unwrap();
        }
        drop(writer);
        let end = read_events(
            reader,
            Path::new("pipe"),
            Clock::new(),
            &mark,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(end.activity, 3);
        assert!(mark.last().is_some());
    }

    /// If this fails, a device that only emits sync/misc records (some keyboards' LEDs, scan-code
    /// noise) would keep a node busy forever.
    #[test]
    fn sync_and_misc_only_stream_does_not_count() {
        let (reader, mut writer) = pipe_pair();
        let mark = ActivityMark::new(Arc::new(Notify::new()));
        for _ in 0..100 {
            writer.write_all(&ev(EV_SYN, 0, 0).to_bytes()).unwrap();
            writer.write_all(&ev(EV_MSC, 4, 7).to_bytes()).unwrap();
        }
        drop(writer);
        let end = read_events(
            reader,
            Path::new("pipe"),
            Clock::new(),
            &mark,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(end.events, 200);
        assert_eq!(end.activity, 0);
        assert_eq!(mark.last(), None);
    }

    /// If this fails, a truncated record (a writer that died mid-record) would be decoded from
    /// garbage and could count as a key press.
    #[test]
    fn truncated_record_is_dropped_not_counted() {
        let (reader, mut writer) = pipe_pair();
        let mark = ActivityMark::new(Arc::new(Notify::new()));
        writer.write_all(&ev(EV_SYN, 0, 0).to_bytes()).unwrap();
        writer
            .write_all(&ev(EV_KEY, 30, 1).to_bytes()[..20])
            .unwrap();
        drop(writer);
        let end = read_events(
            reader,
            Path::new("pipe"),
            Clock::new(),
            &mark,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            end,
            ReaderEnd {
                events: 1,
                activity: 0,
                truncated_bytes: 20
            }
        );
        assert_eq!(mark.last(), None);
    }

    /// If this fails, coalescing (one wake-up per pause instead of one per mouse report) loses
    /// the records that arrive during the pause or does not mark activity at once.
    #[test]
    fn coalesced_reading_still_sees_every_record() {
        let (reader, mut writer) = pipe_pair();
        let mark = Arc::new(ActivityMark::new(Arc::new(Notify::new())));
        writer.write_all(&ev(EV_REL, 0, 1).to_bytes()).unwrap();
        let reader_mark = mark.clone();
        let reader_thread = std::thread::spawn(move || {
            read_events(
                reader,
                Path::new("pipe"),
                Clock::new(),
                &reader_mark,
                Duration::from_millis(50),
            )
        });
        // The first record is seen before the rest is written.
        while mark.last().is_none() {
            std::thread::yield_now();
        }
        for _ in 0..10 {
            writer.write_all(&ev(EV_REL, 1, -1).to_bytes()).unwrap();
            writer.write_all(&ev(EV_SYN, 0, 0).to_bytes()).unwrap();
        }
        drop(writer);
        let end = reader_thread.join().unwrap().unwrap();
        assert_eq!(end.activity, 11);
        assert_eq!(end.events, 21);
    }

    /// If this fails, a named FIFO (how tests and tools stand in for /dev/input/eventN) would not
    /// be found by the scanner or read like a device.
    #[test]
    fn fifo_in_an_input_dir_is_listed_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("event7");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(dir.path().join("mice"), b"").unwrap();
        assert_eq!(list_devices(dir.path()).unwrap(), vec![fifo.clone()]);
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            // Blocks until the reader below has opened the FIFO.
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .unwrap();
            w.write_all(&ev(EV_KEY, 272, 1).to_bytes()).unwrap();
        });
        let reader = open_device(&fifo).unwrap();
        let mark = ActivityMark::new(Arc::new(Notify::new()));
        let end = read_events(reader, &fifo, Clock::new(), &mark, Duration::ZERO).unwrap();
        writer.join().unwrap();
        assert_eq!(end.activity, 1);
        assert!(mark.last().is_some());
    }

    /// If this fails, keyboards and mice would be told apart from lid switches and
    /// accelerometers wrongly (sysfs bitmaps are most-significant word first).
    #[test]
    fn sysfs_capability_bitmaps() {
        // A keyboard: EV_SYN, EV_KEY, EV_MSC, EV_LED, EV_REP.
        assert!(bitmap_has("120013", u32::from(EV_KEY)));
        assert!(!bitmap_has("120013", u32::from(EV_REL)));
        // Multi-word bitmap: bit 64 lives in the second-to-last word.
        assert!(bitmap_has("1 0", 64));
        assert!(!bitmap_has("1 0", 0));
        let sys = tempfile::tempdir().unwrap();
        let make = |name: &str, ev: &str, props: &str| {
            let d = sys.path().join(name).join("device/capabilities");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("ev"), ev).unwrap();
            std::fs::write(sys.path().join(name).join("device/properties"), props).unwrap();
        };
        make("event0", "120013\n", "0\n"); // keyboard
        make("event1", "21\n", "0\n"); // lid switch: EV_SYN | EV_SW
        make("event2", "9\n", "40\n"); // accelerometer: EV_SYN | EV_ABS, prop 6
        make("event3", "17\n", "0\n"); // mouse: EV_SYN | EV_KEY | EV_REL | EV_MSC
        assert!(is_human_input(sys.path(), "event0"));
        assert!(!is_human_input(sys.path(), "event1"));
        assert!(!is_human_input(sys.path(), "event2"));
        assert!(is_human_input(sys.path(), "event3"));
        assert!(
            is_human_input(sys.path(), "event9"),
            "unknown devices are watched"
        );
    }
}
