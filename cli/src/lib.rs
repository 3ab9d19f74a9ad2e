//! kubectl plugin for Lodger: run, ps, nodes, migrate, signal, logs, history
