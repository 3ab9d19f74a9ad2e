//! systemd-logind's idle hint over the system D-Bus.
//!
//! `org.freedesktop.login1.Manager` aggregates its sessions: `IdleHint` is false while any
//! session that can idle is in use (graphical sessions report it from the desktop's own idle
//! timer, e.g. GNOME's 5-minute screen blank delay; text sessions from their terminal's access
//! time against `IdleActionSec`) or an idle inhibitor is held (a video player); `IdleSinceHint`
//! (µs since the epoch, wall clock) is when the aggregate state last changed. With no sessions at
//! all logind answers "idle since 0", which says nothing about the owner.
//!
//! So this source is coarse (bounded by the desktop's idle delay) but it covers what evdev may
//! not: Wayland desktops where the agent cannot open input devices, remote desktops, and
//! inhibitors. It is read every poll; when the bus is absent (containers without
//! `/run/dbus/system_bus_socket`, machines without systemd) the agent says so once and goes on.
//!
//! Tested here: the decision part ([`interpret`]) on its own, and [`read_hint`] against a real
//! D-Bus peer-to-peer connection serving the `Manager` properties. Not exercised here: a real
//! logind on a system bus (this machine has none), the bus policy that lets a non-root agent
//! read the properties (root can).

use std::time::{Duration, SystemTime};

/// Bus name of systemd-logind.
pub const DESTINATION: &str = "org.freedesktop.login1";
/// Object path of logind's manager object.
pub const PATH: &str = "/org/freedesktop/login1";
/// Interface carrying the idle properties.
pub const INTERFACE: &str = "org.freedesktop.login1.Manager";

/// Errors of the logind source.
#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    /// The system bus could not be reached.
    #[error("failed to connect to the system D-Bus: {0}")]
    Connect(#[source] zbus::Error),
    /// Reading a property failed.
    #[error("failed to read logind property {property}: {source}")]
    Property {
        /// The property.
        property: &'static str,
        /// The D-Bus error.
        #[source]
        source: zbus::Error,
    },
}

impl LogindError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            LogindError::Connect(_) => "logind_connect",
            LogindError::Property { .. } => "logind_property",
        }
    }
}

/// The two properties as logind reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleHint {
    /// `IdleHint`.
    pub idle: bool,
    /// `IdleSinceHint`, µs since the Unix epoch; 0 when unknown.
    pub since_usec: u64,
}

/// What the hint says about the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogindView {
    /// A session is in use (or idleness is inhibited): the owner counts as active now.
    ActiveNow,
    /// Every session has been idle since this moment: the owner's last sign is then.
    IdleSince(SystemTime),
    /// No sessions (idle since 0): no opinion.
    NoInformation,
}

/// Turns logind's hint into what it says about the owner.
pub fn interpret(hint: IdleHint) -> LogindView {
    match hint {
        IdleHint { idle: false, .. } => LogindView::ActiveNow,
        IdleHint {
            idle: true,
            since_usec: 0,
        } => LogindView::NoInformation,
        IdleHint {
            idle: true,
            since_usec,
        } => LogindView::IdleSince(SystemTime::UNIX_EPOCH + Duration::from_micros(since_usec)),
    }
}

/// Connects to the system bus.
pub async fn connect_system() -> Result<zbus::Connection, LogindError> {
    zbus::Connection::system()
        .await
        .map_err(LogindError::Connect)
}

/// Reads `IdleHint` and `IdleSinceHint` from logind's manager on `conn` (uncached: one
/// `Properties.Get` each, no match rules, no signal subscriptions).
pub async fn read_hint(conn: &zbus::Connection) -> Result<IdleHint, LogindError> {
    let proxy: zbus::Proxy<'_> = zbus::proxy::Builder::new(conn)
        .destination(DESTINATION)
        .and_then(|b| b.path(PATH))
        .and_then(|b| b.interface(INTERFACE))
        .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
        .map_err(|source| LogindError::Property {
            property: "IdleHint",
            source,
        })?
        .build()
        .await
        .map_err(|source| LogindError::Property {
            property: "IdleHint",
            source,
        })?;
    let idle: bool =
        proxy
            .get_property("IdleHint")
            .await
            .map_err(|source| LogindError::Property {
                property: "IdleHint",
                source,
            })?;
    let since_usec: u64 = proxy
        .get_property("IdleSinceHint")
        .await
        .map_err(|source| LogindError::Property {
            property: "IdleSinceHint",
            source,
        })?;
    Ok(IdleHint { idle, since_usec })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, a desktop session in use (or a video player's idle inhibitor) would not
    /// keep the node busy, or a machine with no sessions at all would be called busy forever.
    #[test]
    fn hint_interpretation() {
        assert_eq!(
            interpret(IdleHint {
                idle: false,
                since_usec: 1_700_000_000_000_000
            }),
            LogindView::ActiveNow
        );
        assert_eq!(
            interpret(IdleHint {
                idle: true,
                since_usec: 0
            }),
            LogindView::NoInformation
        );
        assert_eq!(
            interpret(IdleHint {
                idle: true,
                since_usec: 1_700_000_000_500_000
            }),
            LogindView::IdleSince(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
            )
        );
    }

    /// A stand-in for logind's manager object, served over a real D-Bus connection.
    struct FakeManager {
        idle: bool,
        since: u64,
    }

    #[zbus::interface(name = "org.freedesktop.login1.Manager")]
    impl FakeManager {
        #[zbus(property)]
        fn idle_hint(&self) -> bool {
            self.idle
        }
        #[zbus(property)]
        fn idle_since_hint(&self) -> u64 {
            self.since
        }
    }

    /// If this fails, the agent asks for the wrong object, interface or property names, or
    /// decodes the D-Bus types wrongly (IdleHint is `b`, IdleSinceHint is `t`): checked over a
    /// real D-Bus peer-to-peer connection (no system bus on this machine).
    #[tokio::test]
    async fn reads_properties_over_a_real_dbus_connection() {
        let (server_sock, client_sock) = tokio::net::UnixStream::pair().unwrap();
        let guid = zbus::Guid::generate();
        let server = async {
            zbus::connection::Builder::unix_stream(server_sock)
                .server(guid)
                .unwrap()
                .p2p()
                .serve_at(
                    PATH,
                    FakeManager {
                        idle: true,
                        since: 1_700_000_123_000_000,
                    },
                )
                .unwrap()
                .build()
                .await
                .unwrap()
        };
        let client = async {
            zbus::connection::Builder::unix_stream(client_sock)
                .p2p()
                .build()
                .await
                .unwrap()
        };
        let (_server, client) = tokio::join!(server, client);
        let hint = tokio::time::timeout(Duration::from_secs(5), read_hint(&client))
            .await
            .expect("answer within 5 s")
            .unwrap();
        assert_eq!(
            hint,
            IdleHint {
                idle: true,
                since_usec: 1_700_000_123_000_000
            }
        );
    }
}
