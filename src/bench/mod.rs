//! Benchmarks run by `twinmq bench`: each measures a twinmq figure beside the
//! physical floor measured in the same run on the same directory.
