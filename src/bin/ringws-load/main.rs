//! ringws-load: the load generator (being written).
fn main() {}
