//! The decision rule compiled for regorus's bytecode VM (the RVM), and its
//! evaluation on one VM per thread.
//!
//! The program is compiled once per policy set, off the request path. Each
//! thread that decides keeps a VM loaded with the program and data of the
//! last set it served, and reloads it when a new set arrives. Arbiter's own
//! built-ins reach the VM two ways. Those the VM's compiler knows by name
//! (`net.cidr_contains`) are compiled as its own built-ins, and the program
//! is given Arbiter's function for them. The others (`io.jwt.*`, the
//! `net.cidr_*` additions) the compiler turns into HostAwait suspensions,
//! which the host answers here. Both run the functions the interpreter calls.
//!
//! The VM turns most errors inside a rule body into "the body failed",
//! silently; what it does report (time and instruction limits, overflow)
//! comes back as [`RvmError`], and the caller falls back to the interpreter
//! for that request.

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::{ExecutionMode, ExecutionState, RegoVM, SuspendReason, VmError};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::builtins;

/// Why an evaluation on the VM gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RvmError {
    #[error("evaluation exceeded its time limit")]
    Timeout,
    #[error("the bytecode VM failed: {0}")]
    Vm(String),
}

/// Tells one compiled program from another, so a thread's VM is reloaded
/// exactly when the set it serves changes.
static NEXT_PROGRAM_ID: AtomicU64 = AtomicU64::new(1);

/// The decision rule of one policy set, compiled for the VM.
pub struct CompiledDecision {
    id: u64,
    program: Arc<Program>,
    data: Value,
    /// Whether the program calls Arbiter's built-ins, which need the
    /// suspendable mode (about 20% slower) to be answered.
    suspendable: bool,
    eval_timeout: Duration,
    strict_builtin_errors: bool,
}

impl std::fmt::Debug for CompiledDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledDecision")
            .field("id", &self.id)
            .field("instructions", &self.program.instructions.len())
            .field("suspendable", &self.suspendable)
            .finish_non_exhaustive()
    }
}

/// How often the VM reads the clock, in instructions.
const TIMER_CHECK_INTERVAL: u32 = 64;

impl CompiledDecision {
    /// Compiles `rule` (`data.envoy.authz.allow`) of a prepared engine.
    ///
    /// # Errors
    /// What the RVM compiler cannot compile, in its words (a construct it
    /// does not support, with file and line).
    pub fn compile(
        engine: &mut Engine,
        rule: &str,
        eval_timeout: Duration,
        strict_builtin_errors: bool,
    ) -> Result<Self, String> {
        let entry: regorus::Rc<str> = rule.into();
        let compiled = engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| e.to_string())?;
        let host_builtins: Vec<(&str, usize)> = builtins::BUILTINS
            .iter()
            .filter(|(name, _, _)| builtins::vm_native(name).is_none())
            .map(|(name, arity, _)| (*name, *arity))
            .collect();
        // The VM compiler is young: should it panic on some policy, that
        // policy runs on the interpreter instead of failing the load.
        let program = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Compiler::compile_from_policy_with_host_await(&compiled, &[rule], &host_builtins)
        }))
        .map_err(|_| "the bytecode VM compiler failed on this policy".to_owned())?
        .map_err(|e| one_line(&e.to_string()))?;
        let program = with_native_builtins(program)?;
        let decision = Self {
            id: NEXT_PROGRAM_ID.fetch_add(1, Ordering::Relaxed),
            suspendable: program.has_host_await(),
            program,
            data: engine.get_data(),
            eval_timeout,
            strict_builtin_errors,
        };
        // Loading checks the data against the rule tree: a conflict is a
        // reason not to use the VM, found now rather than per request.
        decision.new_vm().map_err(|e| e.to_string())?;
        Ok(decision)
    }

    /// Whether the program suspends for Arbiter's built-ins (HostAwait).
    #[cfg(test)]
    pub(crate) fn host_calls(&self) -> bool {
        self.suspendable
    }

    fn new_vm(&self) -> Result<RegoVM, RvmError> {
        let mut vm = RegoVM::new();
        vm.load_program(Arc::clone(&self.program));
        vm.set_data(self.data.clone())
            .map_err(|e| RvmError::Vm(e.to_string()))?;
        // The time limit is the bound; instructions are not counted.
        vm.set_max_instructions(usize::MAX);
        vm.set_execution_timer_config(Some(ExecutionTimerConfig {
            limit: self.eval_timeout,
            check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
        }));
        vm.set_strict_builtin_errors(self.strict_builtin_errors);
        vm.set_execution_mode(if self.suspendable {
            ExecutionMode::Suspendable
        } else {
            ExecutionMode::RunToCompletion
        });
        Ok(vm)
    }

    /// Evaluates the decision rule for one input on this thread's VM,
    /// within `eval_timeout`.
    ///
    /// # Errors
    /// The evaluation ran out of time, or the VM reported an error.
    pub fn evaluate(&self, input: Value) -> Result<Value, RvmError> {
        self.evaluate_within(input, self.eval_timeout)
    }

    /// As [`CompiledDecision::evaluate`], within `limit`.
    ///
    /// # Errors
    /// As [`CompiledDecision::evaluate`].
    pub fn evaluate_within(&self, input: Value, limit: Duration) -> Result<Value, RvmError> {
        thread_local! {
            static VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
        }
        VM.with(|cell| {
            let mut slot = cell.try_borrow_mut().map_err(|_| {
                RvmError::Vm("the thread's VM is already in use (re-entered)".into())
            })?;
            let vm = match &mut *slot {
                Some((id, vm)) if *id == self.id => vm,
                other => {
                    let (_, vm) = other.insert((self.id, self.new_vm()?));
                    vm
                }
            };
            vm.set_execution_timer_config(Some(ExecutionTimerConfig {
                limit,
                check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
            }));
            vm.set_input(input);
            // A panic inside the VM is an error for this request (the
            // interpreter decides it), and the VM is made anew.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(vm)))
                .unwrap_or_else(|_| Err(RvmError::Vm("the bytecode VM panicked".into())));
            if result.is_err() {
                *slot = None;
            } else {
                // The input may be large (a body): not kept until the next request.
                vm.set_input(Value::Null);
            }
            result
        })
    }

    fn run(&self, vm: &mut RegoVM) -> Result<Value, RvmError> {
        let value = vm.execute_entry_point_by_index(0).map_err(classify)?;
        if !self.suspendable {
            return Ok(value);
        }
        loop {
            let (name, args) = match vm.execution_state() {
                ExecutionState::Completed { result } => return Ok(result.clone()),
                ExecutionState::Suspended {
                    reason:
                        SuspendReason::HostAwait {
                            identifier,
                            argument,
                            ..
                        },
                    ..
                } => {
                    let name = identifier
                        .as_string()
                        .map_err(|e| RvmError::Vm(format!("host call without a name: {e}")))?
                        .clone();
                    let args = argument
                        .as_array()
                        .map_err(|e| RvmError::Vm(format!("host call {name}: {e}")))?
                        .to_vec();
                    (name, args)
                }
                ExecutionState::Error { error } => return Err(classify(error.clone())),
                other => {
                    return Err(RvmError::Vm(format!(
                        "unexpected VM state after execution: {other:?}"
                    )));
                }
            };
            let answer = builtins::call(&name, args);
            vm.resume(Some(answer)).map_err(classify)?;
        }
    }
}

/// The program with Arbiter's function in place of the VM's own for every
/// built-in of [`builtins::VM_NATIVE`] it calls.
fn with_native_builtins(program: Arc<Program>) -> Result<Arc<Program>, String> {
    let calls_one = program
        .builtin_info_table
        .iter()
        .any(|info| builtins::vm_native(&info.name).is_some());
    if !calls_one {
        return Ok(program);
    }
    let mut program = Arc::unwrap_or_clone(program);
    if program.resolved_builtins.len() != program.builtin_info_table.len() {
        return Err("the bytecode VM compiler left built-ins unresolved".to_owned());
    }
    for (info, resolved) in program
        .builtin_info_table
        .iter()
        .zip(program.resolved_builtins.iter_mut())
    {
        if let Some(native) = builtins::vm_native(&info.name) {
            if u16::from(native.1) != info.num_args {
                return Err(format!(
                    "the bytecode VM calls {} with {} arguments, Arbiter's takes {}",
                    info.name, info.num_args, native.1
                ));
            }
            *resolved = native;
        }
    }
    Ok(Arc::new(program))
}

/// The first import of a whole package (`import data.lib.util`, then
/// `util.path`), with its file and line. Such references evaluate wrongly
/// on regorus 0.14's VM (a set union through them came out empty, with no
/// error), so a policy set that has one stays on the interpreter; import
/// the rules themselves (`import data.lib.util.path`).
pub fn package_import<'a>(
    rego: impl IntoIterator<Item = (&'a std::path::Path, &'a str)>,
    packages: &[(String, String)],
) -> Option<String> {
    // Tests (`*_test.rego`) are never reached from the decision.
    let reachable = rego
        .into_iter()
        .filter(|(file, _)| !file.to_string_lossy().ends_with("_test.rego"));
    for (file, text) in reachable {
        for (n, line) in text.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("import ") else {
                continue;
            };
            let path = rest
                .split(|c: char| c.is_whitespace() || c == '#')
                .next()
                .unwrap_or_default();
            let imports_a_package = packages.iter().any(|(_, package)| {
                package == path
                    || package
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.starts_with('.'))
            });
            if imports_a_package {
                return Some(format!(
                    "{}:{}: `import {path}` imports a whole package, which the bytecode VM evaluates wrongly; import its rules (`import {path}.<rule>`)",
                    file.display(),
                    n + 1
                ));
            }
        }
    }
    None
}

/// A compiler message (`--> file:line:col`, the source, `error: what`) as
/// `file:line:col: what`, for a log field and `/readyz`.
fn one_line(message: &str) -> String {
    let at = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .map(str::trim);
    let what = message
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or(message.trim());
    match at {
        Some(at) => format!("{at}: {what}"),
        None => what.to_owned(),
    }
}

fn classify(error: VmError) -> RvmError {
    match error {
        VmError::TimeLimitExceeded { .. } => RvmError::Timeout,
        other => RvmError::Vm(other.to_string()),
    }
}
