//! The `slipway` command-line shell: parses arguments and hands work to the core and the
//! engines. It holds no pipeline logic of its own.

fn main() {
    println!("slipway");
}
