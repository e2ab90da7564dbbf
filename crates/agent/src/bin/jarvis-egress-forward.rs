//! The egress forwarder on its own (tests and servers that ship it separately); the cloud
//! server's own binary runs the same code as `jarvis-cloud egress-forward …`.

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(jarvis_agent::egress::FORWARD_ARG) {
        args.remove(0);
    }
    std::process::exit(jarvis_agent::egress::forward_main(&args));
}
