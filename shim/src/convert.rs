//! Mapping between the control protocol's types and the engine's (kept apart so the wire format
//! does not depend on the engine crate).

use lodger_engine::{JobId, Strategy as EngineStrategy};

use crate::control::{JobIdentity, Strategy};

/// Wire strategy → engine strategy.
pub fn strategy_in(s: Strategy) -> EngineStrategy {
    match s {
        Strategy::StopAndCopy => EngineStrategy::StopAndCopy,
        Strategy::LazyRestore => EngineStrategy::LazyRestore,
        Strategy::PostCopy => EngineStrategy::PostCopy,
        Strategy::PreCopy => EngineStrategy::PreCopy,
    }
}

/// Engine strategy → wire strategy.
pub fn strategy_out(s: EngineStrategy) -> Strategy {
    match s {
        EngineStrategy::StopAndCopy => Strategy::StopAndCopy,
        EngineStrategy::LazyRestore => Strategy::LazyRestore,
        EngineStrategy::PostCopy => Strategy::PostCopy,
        EngineStrategy::PreCopy => Strategy::PreCopy,
    }
}

/// Wire job identity → engine job identity.
pub fn job_id(j: &JobIdentity) -> JobId {
    JobId {
        namespace: j.namespace.clone(),
        name: j.name.clone(),
        uid: j.uid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both enums spell strategies the same on the wire and in manifests; a mismatch would make
    /// the shim run a strategy other than the one requested.
    #[test]
    fn strategies_round_trip_with_the_same_spelling() {
        for s in [
            Strategy::StopAndCopy,
            Strategy::LazyRestore,
            Strategy::PostCopy,
            Strategy::PreCopy,
        ] {
            let e = strategy_in(s);
            assert_eq!(strategy_out(e), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                serde_json::to_string(&e).unwrap()
            );
        }
    }
}
