//! knode-pause: the pod's infra container. It holds the pod's namespaces by
//! staying alive, reaps the zombies re-parented to it (it is PID 1 of the
//! pod's PID namespace with shareProcessNamespace), and exits 0 on SIGTERM or
//! SIGINT. It must stay tiny and static: libc only, nothing allocated after
//! start, no dynamic loader in the image.

use std::process::ExitCode;

/// Reaps every exited child. Children inherited across exec (or exited
/// before the handler was installed) are reaped by the first call.
extern "C" fn reap(_: libc::c_int) {
    // SAFETY: waitpid with a null status pointer is async-signal-safe and
    // touches no memory of ours; errno is saved and restored so that the
    // interrupted code does not see ECHILD.
    unsafe {
        let errno = *libc::__errno_location();
        while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        *libc::__errno_location() = errno;
    }
}

/// Exits 0: the runtime asked the pod to stop.
extern "C" fn shut_down(_: libc::c_int) {
    const MSG: &[u8] = b"knode-pause: shutting down\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(0);
    }
}

/// Installs `handler` for `sig`; false if the kernel refused.
fn on_signal(sig: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags); the
    // handler is a plain extern "C" fn that lives for the whole program.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as libc::sighandler_t;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        None => {}
        Some(a) if a == "-v" || a == "--version" => {
            println!("knode-pause {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(a) => {
            eprintln!(
                "knode-pause: unknown argument {a:?} (the only one is -v, which prints the version)"
            );
            return ExitCode::from(2);
        }
    }
    if !(on_signal(libc::SIGINT, shut_down, 0)
        && on_signal(libc::SIGTERM, shut_down, 0)
        && on_signal(libc::SIGCHLD, reap, libc::SA_NOCLDSTOP | libc::SA_RESTART))
    {
        eprintln!(
            "knode-pause: install signal handlers: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    // Orphans anywhere below us come to us, not to the host's init, also
    // when we are not PID 1 (a pod without a shared PID namespace). Failure
    // only loses that nicety, so it is not fatal.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // Zombies that exited before the SIGCHLD handler existed.
    reap(0);
    loop {
        // SAFETY: pause has no preconditions; it returns after each handled signal.
        unsafe { libc::pause() };
    }
}
