mod http1;
fn main() {}
