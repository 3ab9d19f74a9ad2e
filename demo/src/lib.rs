//! Demo workload, one-machine migration demo and engine benchmark.
