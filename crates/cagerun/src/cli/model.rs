//! `cagerun model pull|ls|rm`: Ollama models in Ollama's own layout, in the cage's models
//! directory (`models/` by default), so the model server reads them as they are.

use std::path::PathBuf;

use anyhow::Result;
use cage_runtime::models;
use cage_runtime::progress::human;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ModelsDir {
    /// The models directory (Ollama's OLLAMA_MODELS layout).
    #[arg(long, value_name = "DIR", default_value = "models", global = true)]
    models: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Pull NAME[:TAG] (e.g. smollm2:135m) from the Ollama registry.
    Pull {
        name: String,
        /// Another registry, e.g. http://127.0.0.1:5000 (plain HTTP only for this machine).
        #[arg(long, value_name = "URL")]
        registry: Option<String>,
        #[command(flatten)]
        dir: ModelsDir,
    },
    /// List the models (name, size).
    Ls {
        #[command(flatten)]
        dir: ModelsDir,
    },
    /// Remove a model and the blobs no other model uses.
    Rm {
        name: String,
        /// The registry the model came from (as given to pull).
        #[arg(long, value_name = "URL")]
        registry: Option<String>,
        #[command(flatten)]
        dir: ModelsDir,
    },
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Pull {
            name,
            registry,
            dir,
        } => {
            let model = models::parse(&name, registry.as_deref())?;
            let digest = models::pull(&dir.models, &model, registry.as_deref())?;
            println!("{model}: {digest} → {}", dir.models.display());
            Ok(())
        }
        ModelCommand::Ls { dir } => {
            println!("{:<56} {:>10}", "NAME", "SIZE");
            for (name, size) in models::list(&dir.models)? {
                println!("{name:<56} {:>10}", human(size));
            }
            Ok(())
        }
        ModelCommand::Rm {
            name,
            registry,
            dir,
        } => {
            let model = models::parse(&name, registry.as_deref())?;
            let freed = models::remove(&dir.models, &model)?;
            println!("removed {model}; freed {}", human(freed));
            Ok(())
        }
    }
}
