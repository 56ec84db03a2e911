//! Failures (classified in `snakepit_core::failure`) as the terms Elixir
//! turns into `%Snakepit.Error{}`: `{category, message, details}` with an
//! atom category and an atom-keyed map whose `:reason` is an atom.

use rustler::{Atom, Encoder, Env, Term};
pub use snakepit_core::failure::{Category, Failure, Reason};

use crate::atoms;

/// Encoding of a [`Failure`] (a core type, hence a trait).
pub trait FailureTerm {
    /// `{category, message, details}`.
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a>;

    /// `{:error, {category, message, details}}`.
    fn error_tuple<'a>(&self, env: Env<'a>) -> Term<'a> {
        (atoms::error(), self.encode(env)).encode(env)
    }
}

impl FailureTerm for Failure {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let mut details = Term::map_new(env);
        let mut put = |key: Atom, value: Term<'a>| {
            details = details.map_put(key, value).unwrap_or(details);
        };
        if let Some(reason) = self.reason {
            put(atoms::reason(), reason_atom(reason).encode(env));
        }
        if let Some(path) = &self.path {
            put(atoms::path(), path.encode(env));
        }
        if let Some(python_type) = &self.python_type {
            put(atoms::python_type(), python_type.encode(env));
        }
        if let Some(traceback) = &self.traceback {
            put(atoms::traceback(), traceback.encode(env));
        }
        if let Some(code) = self.grpc_status {
            put(atoms::grpc_status(), format!("{code:?}").encode(env));
        }
        if let Some(stopped) = self.tool_stopped {
            put(atoms::tool_stopped(), stopped.encode(env));
        }
        let category = category_atom(self.category);
        (category, self.message.as_str(), details).encode(env)
    }
}

fn category_atom(category: Category) -> Atom {
    match category {
        Category::Validation => atoms::validation(),
        Category::Worker => atoms::worker(),
        Category::Timeout => atoms::timeout(),
        Category::Python => atoms::python(),
        Category::Transport => atoms::transport(),
    }
}

fn reason_atom(reason: Reason) -> Atom {
    match reason {
        Reason::InvalidArgument => atoms::invalid_argument(),
        Reason::InvalidBinaryParameter => atoms::invalid_binary_parameter(),
        Reason::InvalidJson => atoms::invalid_json(),
        Reason::TooDeep => atoms::too_deep(),
        Reason::DuplicateKey => atoms::duplicate_key(),
        Reason::NumberOutOfRange => atoms::number_out_of_range(),
        Reason::MessageTooLarge => atoms::message_too_large(),
        Reason::NotReady => atoms::not_ready(),
        Reason::WorkerExited => atoms::worker_exited(),
        Reason::Timeout => atoms::timeout(),
        Reason::IdleTimeout => atoms::idle_timeout(),
        Reason::Panicked => atoms::panicked(),
        Reason::UnknownTool => atoms::unknown_tool(),
        Reason::InvalidArguments => atoms::invalid_arguments(),
        Reason::StreamingTool => atoms::streaming_tool(),
        Reason::RefLost => atoms::ref_lost(),
        Reason::RefReleased => atoms::ref_released(),
        Reason::TooManyRefs => atoms::too_many_refs(),
        Reason::CallNotAllowed => atoms::call_not_allowed(),
        Reason::NotAnIterator => atoms::not_an_iterator(),
        Reason::Refused => atoms::refused(),
    }
}
