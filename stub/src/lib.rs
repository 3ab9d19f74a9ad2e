//! Lodger's home stub: represents a job on its home node (signals, output, exit status)
