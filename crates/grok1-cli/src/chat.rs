//! `grok1 chat`: a conversation in the terminal, with the server's chat
//! template and stop rule, replies streamed as they are generated.
//!
//! Enter sends a message; a line ending in `\` continues on the next line, and
//! a block between lines of `"""` is sent whole. Ctrl-C stops a reply; at the
//! prompt it (or Ctrl-D, or `/exit`) quits.

use std::ffi::OsStr;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use grok1::engine::{EngineHandle, Event, Request};
use grok1::sampling::SamplingParams;
use grok1::session::{self, Session, SessionModel};
use grok1_server::chat::{self, Role};
use grok1_tokenizer::Tokenizer;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::args::ChatArgs;
use crate::model_source;
use crate::serve::{engine_config, set_threads};

/// Where chat reads its lines: a line editor with history on a terminal,
/// plain lines from stdin otherwise (pipes and scripts).
enum Input {
    Editor {
        editor: Box<DefaultEditor>,
        history: Option<PathBuf>,
    },
    /// Lines read by a thread of their own, so that a Ctrl-C or SIGTERM at
    /// the prompt (`quit`) ends the chat through its normal exit: under
    /// mpirun that stops the other ranks and finalises MPI.
    Plain {
        lines: mpsc::Receiver<std::io::Result<String>>,
        quit: Arc<AtomicBool>,
    },
}

impl Input {
    fn open(quit: Arc<AtomicBool>) -> anyhow::Result<Input> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            let (tx, lines) = mpsc::channel();
            std::thread::Builder::new()
                .name("grok1-chat-stdin".into())
                .spawn(move || {
                    for line in std::io::stdin().lock().lines() {
                        let failed = line.is_err();
                        if tx.send(line).is_err() || failed {
                            break;
                        }
                    }
                })
                .context("starting the stdin reader")?;
            return Ok(Input::Plain { lines, quit });
        }
        let mut editor = DefaultEditor::new().context("starting the line editor")?;
        let history = history_file(
            std::env::var_os("XDG_STATE_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        );
        // A missing or unreadable history only means starting without one.
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        Ok(Input::Editor {
            editor: Box::new(editor),
            history,
        })
    }

    /// One line without its end; `None` at the end of input, on Ctrl-D, or
    /// on Ctrl-C at the prompt.
    fn line(&mut self, continuation: bool) -> std::io::Result<Option<String>> {
        match self {
            Input::Plain { lines, quit } => {
                if !continuation {
                    let mut out = std::io::stdout();
                    write!(out, "\nUser: ")?;
                    out.flush()?;
                }
                loop {
                    match lines.recv_timeout(Duration::from_millis(50)) {
                        Ok(line) => return Ok(Some(line?)),
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
                        Err(mpsc::RecvTimeoutError::Timeout) if quit.load(Ordering::SeqCst) => {
                            return Ok(None)
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                }
            }
            Input::Editor { editor, .. } => {
                if !continuation {
                    println!();
                }
                let prompt = if continuation { "... " } else { "User: " };
                match editor.readline(prompt) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            // (A failure here loses only the history entry.)
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Ok(Some(line))
                    }
                    Err(ReadlineError::Eof | ReadlineError::Interrupted) => Ok(None),
                    Err(ReadlineError::Io(e)) => Err(e),
                    Err(e) => Err(std::io::Error::other(e)),
                }
            }
        }
    }

    /// Saves the editor's history; a place that cannot be written costs only
    /// the history, with a warning.
    fn save_history(&mut self) {
        let Input::Editor {
            editor,
            history: Some(path),
        } = self
        else {
            return;
        };
        let saved = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(ReadlineError::Io)
            .and_then(|()| editor.save_history(path));
        if let Err(e) = saved {
            eprintln!(
                "grok1: warning: could not save the chat history to {}: {e}",
                path.display()
            );
        }
    }
}

/// `$XDG_STATE_HOME/grok1/history`, else `~/.local/state/grok1/history` (the
/// XDG base directory rule: a relative XDG path is ignored); `None` without
/// either.
fn history_file(xdg_state_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let state = match xdg_state_home.map(Path::new) {
        Some(dir) if dir.is_absolute() => dir.to_path_buf(),
        _ => Path::new(home.filter(|h| !h.is_empty())?).join(".local/state"),
    };
    Some(state.join("grok1").join("history"))
}

/// Reads one message from `next_line` (told whether the line continues a
/// message); `None` at the end of input or on `/exit`.
fn read_message(
    next_line: &mut dyn FnMut(bool) -> std::io::Result<Option<String>>,
) -> std::io::Result<Option<String>> {
    let mut message = String::new();
    let mut block = false;
    loop {
        let continuation = block || !message.is_empty();
        let Some(line) = next_line(continuation)? else {
            return Ok((!message.trim().is_empty()).then_some(message));
        };
        if line.trim() == "\"\"\"" {
            if block {
                return Ok(Some(message));
            }
            block = true;
            continue;
        }
        if block {
            message.push_str(&line);
            message.push('\n');
            continue;
        }
        if message.is_empty() && line.trim() == "/exit" {
            return Ok(None);
        }
        if let Some(start) = line.strip_suffix('\\') {
            message.push_str(start);
            message.push('\n');
            continue;
        }
        message.push_str(&line);
        if !message.trim().is_empty() {
            return Ok(Some(message));
        }
        message.clear();
    }
}

/// The conversation as the token ids the model has read and written, so each
/// turn's prompt extends the last one's and the engine's prefix cache serves
/// all of it but the new message (re-encoding the transcript as text would
/// tokenise the replies differently from how they were generated).
#[derive(Default)]
struct Conversation {
    /// Ids up to the end of the last reply (of the part of it kept).
    ids: Vec<u32>,
    /// Text of the last reply that its kept ids do not hold (the end of a
    /// token that ran past the reply), to encode with the next message.
    pending: String,
}

impl Conversation {
    /// The prompt for `message`: the template's first turn (with the system
    /// message) for a new conversation, else the ids so far followed by the
    /// next turn encoded as their continuation.
    fn prompt(&self, tokenizer: &Tokenizer, system: Option<&str>, message: &str) -> Vec<u32> {
        if self.ids.is_empty() {
            let mut turns = Vec::new();
            if let Some(system) = system {
                turns.push((Role::System, system.to_string()));
            }
            turns.push((Role::User, message.to_string()));
            return tokenizer.encode(&chat::render(&turns));
        }
        let next = format!("{}{}", self.pending, chat::next_turn(message));
        let mut ids = self.ids.clone();
        ids.extend(tokenizer.encode_continuation(&next));
        ids
    }

    /// The conversation a session file holds.
    fn resume(saved: &Session, path: &Path, context: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            saved.tokens.len() < context,
            "the conversation in {} ({} tokens) fills the context ({context}); start a new session",
            path.display(),
            saved.tokens.len()
        );
        let pending = match &saved.extra["pending"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => anyhow::bail!(
                "session {}: its pending text is {other}, not a string",
                path.display()
            ),
        };
        Ok(Conversation {
            ids: saved.tokens.clone(),
            pending,
        })
    }

    /// Records the reply to `prompt`: its `generated` ids and the text they
    /// released. The reply keeps its text up to its trailing whitespace (as
    /// the template does) and the longest run of its ids whose text is a
    /// prefix of that; a stop string's ids are dropped.
    fn replied(&mut self, tokenizer: &Tokenizer, prompt: Vec<u32>, generated: &[u32], reply: &str) {
        let text = reply.trim_end();
        let (kept, decoded) = (0..=generated.len())
            .rev()
            .find_map(|k| {
                let decoded = tokenizer.decode_after(&prompt, &generated[..k]).ok()?;
                text.starts_with(&decoded).then_some((k, decoded.len()))
            })
            .unwrap_or((0, 0));
        self.ids = prompt;
        self.ids.extend_from_slice(&generated[..kept]);
        self.pending = text[decoded..].to_string();
    }
}

/// What rank 0 reads before the ranks part: the tokenizer, and with
/// `--session` its path and model identity, and the conversation saved
/// there (when the file exists), read and checked whole.
struct ChatSetup {
    tokenizer: Arc<Tokenizer>,
    session: Option<(PathBuf, SessionModel)>,
    resumed: Option<(Session, Conversation)>,
}

impl ChatSetup {
    fn read(
        loaded: &grok1::LoadedModel,
        args: &ChatArgs,
        identity: Option<SessionModel>,
        context: usize,
    ) -> anyhow::Result<Self> {
        let tokenizer = Arc::new(model_source::model_tokenizer(
            loaded,
            args.tokenizer.as_deref(),
        )?);
        let (Some(path), Some(identity)) = (&args.session, identity) else {
            return Ok(ChatSetup {
                tokenizer,
                session: None,
                resumed: None,
            });
        };
        let resumed = if path.exists() {
            // Sessions saved before the fast and int8 modes cached bf16
            // hold f32: say how to resume them.
            let saved = session::load(path, &identity).map_err(|e| match &e {
                session::SessionError::Mismatch {
                    field: "KV type",
                    saved,
                    ..
                } => anyhow::anyhow!("{e}; resume it with --kv-type {saved}"),
                _ => anyhow::Error::from(e),
            })?;
            let conversation = Conversation::resume(&saved, path, context)?;
            Some((saved, conversation))
        } else {
            None
        };
        Ok(ChatSetup {
            tokenizer,
            session: Some((path.clone(), identity)),
            resumed,
        })
    }
}

pub fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    set_threads(args.engine.threads)?;
    let loaded = model_source::load_args(&args.model)?;
    let precision = args.model.precision();
    let kv_type = args.model.kv_type(precision);
    let config = crate::parallel::agree(engine_config(
        &args.engine,
        &loaded.model,
        precision,
        kv_type,
    ))?;
    // Checked by every rank alike before the others start following rank 0
    // (a refusal after that would end the job by MPI_Abort).
    let bad = |e: String| anyhow::Error::from(crate::parallel::Refused(e));
    if args.session.is_some() && !config.prefix_cache {
        return Err(bad(
            "--session keeps the conversation in the prefix cache; drop --no-prefix-cache".into(),
        ));
    }
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    sampling.validate().map_err(|e| bad(e.to_string()))?;
    if args.stop.iter().any(|s| s.is_empty()) {
        return Err(bad(
            "--stop needs some text (an empty stop string would end every reply at once)".into(),
        ));
    }
    // Made by every rank of a split model together (it samples weights
    // that several ranks hold); the saved keys and values move between the
    // ranks in the engine's export and import.
    let identity = args
        .session
        .as_ref()
        .map(|_| SessionModel::of(&loaded.model, precision, kv_type));
    // Rank 0 reads the tokenizer and the session (checked whole) before the
    // others start following it, and every rank learns whether that failed:
    // a refusal after they parted would end the job by MPI_Abort.
    let setup = crate::parallel::agree(if crate::parallel::is_root() {
        ChatSetup::read(&loaded, &args, identity, config.context).map(Some)
    } else {
        Ok(None)
    })?;
    // Limited from here: the setup above may take rank 0 a while (a large
    // session file), and the others wait for it without a limit.
    crate::parallel::arm_wait_limit();
    // Under mpirun rank 0 talks to the user; the others run the steps it plans.
    if let Some(done) = crate::parallel::follow_engine(&loaded.model, &config)? {
        return Ok(done);
    }
    let Some(ChatSetup {
        tokenizer,
        session,
        resumed,
    }) = setup
    else {
        unreachable!("follow_engine returns None on rank 0 alone, which read the setup")
    };
    let model = loaded.model;
    let eos = model.config().eos_token;
    let context = config.context;
    let engine = EngineHandle::start(model, tokenizer.clone(), config);
    // Stopped on every way out, an error's included, before rank 0 says it.
    let _stop = crate::parallel::StopEngine(&engine);
    let mut conversation = Conversation::default();
    let mut seed = args.seed;
    if let (Some((path, _)), Some((saved, resumed))) = (&session, resumed) {
        conversation = resumed;
        if let Some(next) = saved.extra["next_seed"].as_u64() {
            seed = next;
        }
        let kv_tokens = engine
            .import_prefix(saved.kv)
            .with_context(|| format!("resuming {}", path.display()))?;
        if args.system.is_some() {
            eprintln!(
                "grok1: warning: --system is ignored: the resumed conversation has its own start"
            );
        }
        eprintln!(
            "grok1 chat: resumed {} tokens of conversation from {} ({kv_tokens} with their keys and values)",
            conversation.ids.len(),
            path.display()
        );
    }

    // Ctrl-C while a reply streams stops it; at the prompt it quits.
    let replying = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    {
        let (replying, interrupted, quit) = (replying.clone(), interrupted.clone(), quit.clone());
        ctrlc::set_handler(move || {
            if replying.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                quit.store(true, Ordering::SeqCst);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    eprintln!("grok1 chat: Enter sends; end a line with \\ to continue it, or wrap a block in \"\"\" lines.");
    eprintln!("Ctrl-C stops a reply; Ctrl-C at the prompt, Ctrl-D or /exit quits.");
    let mut input = Input::open(quit)?;
    let mut out = std::io::stdout();
    let mut stop_strings: Vec<String> = chat::TURN_SEPARATORS
        .iter()
        .map(|s| s.to_string())
        .collect();
    stop_strings.extend(args.stop.iter().cloned());
    while let Some(message) = read_message(&mut |continuation| input.line(continuation))? {
        let prompt = conversation.prompt(&tokenizer, args.system.as_deref(), &message);
        if prompt.len() >= context {
            eprintln!("grok1: the conversation ({} tokens) fills the context ({context}); start a new chat", prompt.len());
            break;
        }
        let (tx, rx) = mpsc::channel();
        let request = Request {
            max_tokens: args.max_tokens.min(context - prompt.len()),
            prompt: prompt.clone(),
            sampling: SamplingParams {
                seed,
                ..sampling.clone()
            },
            stop_token_ids: vec![eos],
            stop_strings: stop_strings.clone(),
            logprobs: None,
            prompt_logprobs: false,
            constraint: None,
            sink: {
                let interrupted = interrupted.clone();
                Box::new(move |e| tx.send(e).is_ok() && !interrupted.load(Ordering::SeqCst))
            },
        };
        seed = seed.wrapping_add(1);
        interrupted.store(false, Ordering::SeqCst);
        replying.store(true, Ordering::SeqCst);
        let sent = Instant::now();
        engine.submit(request)?;
        write!(out, "\nAssistant:")?;
        out.flush()?;
        let mut reply = String::new();
        let mut generated = Vec::new();
        let mut first_token = None;
        let mut cached = 0;
        for event in rx.iter() {
            let text = match event {
                Event::Token { token, text, .. } => {
                    first_token.get_or_insert_with(|| sent.elapsed());
                    generated.push(token);
                    text
                }
                Event::Text(text) => text,
                Event::Done { cached_tokens, .. } => {
                    cached = cached_tokens;
                    break;
                }
                Event::PromptLogprobs(_) => continue,
            };
            // The raw reply, as the model wrote it: the next turn follows it.
            reply.push_str(&text);
            let shown = reply.trim_start();
            // Shown without its leading whitespace (the label's space is printed).
            let text = &text[text.len().saturating_sub(shown.len())..];
            if !text.is_empty() {
                if shown.len() == text.len() {
                    write!(out, " ")?;
                }
                write!(out, "{text}")?;
                out.flush()?;
            }
        }
        replying.store(false, Ordering::SeqCst);
        if interrupted.swap(false, Ordering::SeqCst) {
            write!(out, " [stopped]")?;
        }
        writeln!(out)?;
        if args.timings {
            let total = sent.elapsed();
            let ttft = first_token.unwrap_or(total);
            let rate = match generated.len() {
                0 | 1 => String::new(),
                n => format!(
                    ", {:.1} tokens/s after it",
                    (n - 1) as f64 / (total - ttft).as_secs_f64().max(1e-9)
                ),
            };
            eprintln!(
                "[prompt {} tokens, {cached} from the cache; first token after {:.1} ms; {} tokens{rate}]",
                prompt.len(),
                ttft.as_secs_f64() * 1000.0,
                generated.len(),
            );
        }
        conversation.replied(&tokenizer, prompt, &generated, &reply);
        if let Some((path, identity)) = &session {
            let kv = engine.export_prefix(conversation.ids.clone())?;
            let extra = serde_json::json!({"pending": conversation.pending, "next_seed": seed});
            session::save(path, identity, &conversation.ids, &kv, extra)?;
        }
    }
    input.save_history();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversation's ids are the last prompt, the reply's ids as
    /// generated, then the next turn; the text is the template's transcript.
    #[test]
    fn each_turn_extends_the_last_prompt_and_its_reply() {
        let tok = Tokenizer::grok1();
        let mut c = Conversation::default();
        let first = c.prompt(&tok, Some("Be brief."), "Hi!");
        assert_eq!(first, tok.encode("Be brief.\n\nUser: Hi!\n\nAssistant:"));
        // A reply that ended on the turn separator (a stop string): its ids
        // are dropped, the reply's are kept as generated.
        let generated = tok.encode_continuation(" Hello.\n\nUser:");
        c.replied(&tok, first.clone(), &generated, " Hello.\n");
        let second = c.prompt(&tok, Some("Be brief."), "2+2?");
        assert_eq!(&second[..first.len()], &first[..]);
        assert_eq!(
            &second[first.len()..first.len() + 2],
            &tok.encode_continuation(" Hello.")[..]
        );
        assert_eq!(
            tok.decode(&second).unwrap(),
            "Be brief.\n\nUser: Hi!\n\nAssistant: Hello.\n\nUser: 2+2?\n\nAssistant:"
        );
        // A reply cut inside a token (interrupted): the token is dropped and
        // its released text goes with the next message.
        let generated = tok.encode_continuation(" Four apples");
        c.replied(&tok, second.clone(), &generated, " Four app");
        assert_eq!(c.pending, " app");
        let third = c.prompt(&tok, None, "Thanks");
        assert_eq!(
            &third[..second.len() + 1],
            &[&second[..], &generated[..1]].concat()[..]
        );
        assert!(tok
            .decode(&third)
            .unwrap()
            .ends_with("2+2?\n\nAssistant: Four app\n\nUser: Thanks\n\nAssistant:"));
    }

    #[test]
    fn messages_continue_with_backslash_and_blocks() {
        let mut lines = "hello\nfirst \\\nsecond\n\"\"\"\na\n\nb\n\"\"\"\n/exit\n".lines();
        let mut input = |_continuation: bool| Ok(lines.next().map(str::to_string));
        assert_eq!(read_message(&mut input).unwrap().as_deref(), Some("hello"));
        assert_eq!(
            read_message(&mut input).unwrap().as_deref(),
            Some("first \nsecond")
        );
        assert_eq!(
            read_message(&mut input).unwrap().as_deref(),
            Some("a\n\nb\n")
        );
        assert_eq!(read_message(&mut input).unwrap(), None);
    }

    #[test]
    fn only_the_first_line_of_a_message_gets_the_user_prompt() {
        let mut lines = "a \\\nb\n\"\"\"\nc\n\"\"\"\n\nd\n".lines();
        let mut asked = Vec::new();
        let mut input = |continuation: bool| {
            asked.push(continuation);
            Ok(lines.next().map(str::to_string))
        };
        assert_eq!(read_message(&mut input).unwrap().as_deref(), Some("a \nb"));
        assert_eq!(read_message(&mut input).unwrap().as_deref(), Some("c\n"));
        assert_eq!(read_message(&mut input).unwrap().as_deref(), Some("d"));
        // An empty line asks again with the prompt.
        assert_eq!(asked, [false, true, false, true, true, false, false]);
    }

    #[test]
    fn history_lives_in_the_xdg_state_directory() {
        let file = |xdg: Option<&str>, home: Option<&str>| {
            history_file(xdg.map(OsStr::new), home.map(OsStr::new))
        };
        assert_eq!(
            file(Some("/state"), Some("/home/u")),
            Some(PathBuf::from("/state/grok1/history"))
        );
        // A relative XDG_STATE_HOME is invalid and ignored, as the spec says.
        for xdg in [None, Some("relative"), Some("")] {
            assert_eq!(
                file(xdg, Some("/home/u")),
                Some(PathBuf::from("/home/u/.local/state/grok1/history"))
            );
        }
        assert_eq!(file(None, None), None);
        assert_eq!(file(None, Some("")), None);
    }
}
