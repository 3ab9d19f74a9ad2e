//! Placement benchmark (filled in below once placement is wired up).
fn main() {}
