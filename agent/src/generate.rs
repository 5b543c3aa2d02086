//! `hostscope completions SHELL` and `hostscope man [COMMAND]`: generated
//! from the command-line definitions in `cli.rs`, printed to stdout. They
//! need no privileges and load nothing.

use std::io::Write as _;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    print(&completion_script(shell))
}

/// Prints the roff manual page of hostscope, or of one of its commands
/// (`hostscope-serve(1)`, named in hostscope(1)'s list of commands).
pub fn man(command: Option<&str>) -> anyhow::Result<()> {
    print(&man_page(command)?)
}

fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hostscope", &mut script);
    script
}

fn man_page(command: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut cli = Cli::command();
    // Gives each subcommand its `hostscope-NAME` display name.
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => cli
            .find_subcommand(name)
            .cloned()
            .with_context(|| format!("no command `{name}`"))?,
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .source(concat!("hostscope ", env!("CARGO_PKG_VERSION")))
        .render(&mut roff)?;
    Ok(title_first(roff))
}

/// The roff crate opens every page with the definition of `\*(Aq` (an
/// apostrophe that survives every formatter); man-pages(7) wants `.TH`
/// first. The title line does not use `\*(Aq`, so the definition can follow it.
fn title_first(roff: Vec<u8>) -> Vec<u8> {
    const PREAMBLE: &[u8] = b".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let Some(page) = roff.strip_prefix(PREAMBLE) else {
        return roff;
    };
    let title_end = page
        .iter()
        .position(|&b| b == b'\n')
        .map_or(page.len(), |i| i + 1);
    let (title, rest) = page.split_at(title_end);
    if !title.starts_with(b".TH ") || title.windows(3).any(|w| w == b"(Aq") {
        return roff;
    }
    [title, PREAMBLE, rest].concat()
}

fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("writing to standard output")
}

/// `COMMAND` of `hostscope man`: a command hostscope has.
pub fn parse_command(text: &str) -> Result<String, String> {
    let cli = Cli::command();
    let names: Vec<&str> = cli
        .get_subcommands()
        .filter(|command| !command.is_hide_set())
        .map(clap::Command::get_name)
        .collect();
    if names.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!("not a command; one of {}", names.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use clap_complete::Shell;

    use super::*;

    #[test]
    fn every_shell_completes_every_command() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            for word in [
                "serve",
                "hist",
                "profile",
                "web.listen-address",
                "web.telemetry-path",
                "log-format",
            ] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
            assert!(
                !script.contains("__symbolize"),
                "{shell}: the sandbox is no command"
            );
        }
    }

    #[test]
    fn man_pages_of_hostscope_and_its_commands() {
        let page = String::from_utf8(man_page(None).unwrap()).unwrap();
        assert!(page.starts_with(".TH hostscope 1 "), "{page}");
        assert!(page.contains("hostscope\\-serve(1)"), "{page}");
        assert!(page.contains("log\\-format"), "{page}");
        let serve = String::from_utf8(man_page(Some("serve")).unwrap()).unwrap();
        assert!(
            serve.starts_with(concat!(
                ".TH hostscope-serve 1  \"hostscope ",
                env!("CARGO_PKG_VERSION"),
                "\""
            )),
            "{serve}"
        );
        for flag in [
            "web.listen\\-address",
            "web.telemetry\\-path",
            "HOSTSCOPE_LISTEN",
        ] {
            assert!(serve.contains(flag), "no {flag} in {serve}");
        }
        for command in ["hist", "profile", "completions", "man"] {
            assert!(man_page(Some(command)).is_ok(), "{command}");
        }
        assert!(man_page(Some("nope")).is_err());
    }
}
