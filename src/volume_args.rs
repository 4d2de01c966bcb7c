//! `weft volume …`'s arguments (Docker's names): this node's named
//! volumes, the `local` driver. Run by `commands::volume`.

use clap::Subcommand;

/// `weft volume …`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume on this node and print its name.
    ///
    /// A volume is a directory, <data-dir>/volumes/NAME/_data, that tasks
    /// on this node mount with --mount type=volume,source=NAME,target=/dir;
    /// it outlives them until `weft volume rm`. Without NAME a name of 64
    /// hex digits is made. Creating an existing volume again succeeds (with
    /// no labels, or its own); with other labels it is refused. NAME: 1-64
    /// letters, digits, '_', '.' or '-', starting with a letter or digit.
    /// Volumes are this node's alone: each node has its own.
    Create {
        /// The driver: only `local` (the default).
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// A label KEY=VALUE (or KEY) (repeatable, at most 128).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A driver option: none are supported (the local driver's
        /// type=tmpfs, o=… are refused; use --mount type=tmpfs on the task).
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        opts: Vec<String>,
        /// The volume's name.
        name: Option<String>,
    },
    /// List this node's volumes.
    #[command(alias = "list")]
    Ls {
        /// Print only names.
        #[arg(short, long)]
        quiet: bool,
        /// dangling=true|false (held by no task / by some), name=TEXT (the
        /// name contains it), driver=local, label=KEY[=VALUE],
        /// label!=KEY[=VALUE] (repeatable: several names match any, labels
        /// must all match).
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Print each volume through a template: {{.Name}}, {{.Driver}},
        /// {{.Mountpoint}}, {{.Scope}}, {{.CreatedAt}}, {{.Labels}},
        /// {{.Label "KEY"}}, {{json .}}; \t and \n are a tab and a newline.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show volumes as JSON (Docker's shape).
    Inspect {
        /// json (the default) or a Go template applied to each, e.g.
        /// '{{.Mountpoint}}' or '{{json .Labels}}'.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes.
    ///
    /// A volume a task on this node holds (running, starting, or stopped
    /// with its container kept) is refused, with -f too ("volume is in use
    /// - [tasks]"); remove the tasks first.
    #[command(alias = "remove")]
    Rm {
        /// A missing volume is no error.
        #[arg(short, long)]
        force: bool,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove the volumes no task holds.
    ///
    /// Every volume of this node that no task holds (named ones too, as
    /// Docker before 23.0 or `docker volume prune --all`), or only those
    /// the label filters pick; prints which, and how much space their data
    /// took. Asks first when stdin is a terminal, unless -f.
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
        /// label=KEY[=VALUE] or label!=KEY[=VALUE]: only volumes that
        /// match (repeatable).
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
}
