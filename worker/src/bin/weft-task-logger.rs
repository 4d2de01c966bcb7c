//! The task logger alone (`weft-task-logger weft-task-logger <task dir>`),
//! for the worker's own tests, which have no `weft` binary to hand to
//! containerd's shim. The daemon uses its own binary in logger mode.

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.as_slice() {
        [_, mode, dir] if mode == weft_worker::logs::LOGGER_ARG => {
            weft_worker::logs::logger::main(std::path::Path::new(dir))
        }
        _ => {
            eprintln!("usage: weft-task-logger weft-task-logger TASK_DIR");
            std::process::ExitCode::from(2)
        }
    }
}
