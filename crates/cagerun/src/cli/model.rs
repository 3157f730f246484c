//! `cagerun model pull|ls|rm`: Ollama models in Ollama's own layout, in the cage's models
//! directory (`models/` by default), so the model server reads them as they are.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cage_image::models::{self, ModelRef, DEFAULT_REGISTRY};
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

fn registry_name(url: Option<&str>) -> String {
    match url {
        Some(u) => u
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string(),
        None => DEFAULT_REGISTRY.to_string(),
    }
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Pull {
            name,
            registry,
            dir,
        } => {
            let model = ModelRef::parse(&name, &registry_name(registry.as_deref()))?;
            let progress = cage_runtime::progress::bars();
            let digest = models::pull_model(&dir.models, &model, registry.as_deref(), progress)
                .with_context(|| format!("pulling model {model}"))?;
            println!("{model}: {digest} → {}", dir.models.display());
            Ok(())
        }
        ModelCommand::Ls { dir } => {
            println!("{:<56} {:>10}", "NAME", "SIZE");
            for (name, size) in models::list_models(&dir.models)? {
                println!("{name:<56} {:>10}", human(size));
            }
            Ok(())
        }
        ModelCommand::Rm {
            name,
            registry,
            dir,
        } => {
            let model = ModelRef::parse(&name, &registry_name(registry.as_deref()))?;
            let freed = models::remove_model(&dir.models, &model)?;
            println!("removed {model}; freed {}", human(freed));
            Ok(())
        }
    }
}
