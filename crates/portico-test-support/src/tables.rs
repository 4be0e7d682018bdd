//! The workspace `testdata/` directory and the one reader of its tables.
//!
//! The tables are tab-separated, copied from primary sources (see `testdata/README.md`):
//! lines starting with `#` are provenance comments, the first other line is the header (or a
//! comment line holding tabs before it, as `# test<TAB>rules<TAB>…`), and every cell is kept
//! as written (an empty cell is an empty string). Rows are read by column
//! name, so a column added to a table does not shift every test's indices.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A path under the workspace's `testdata/` directory.
pub fn testdata(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(relative)
}

/// A TSV table: its header and its rows, comments and blank lines left out.
#[derive(Clone, Debug)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Reads `testdata/<name>`; panics naming the file if it cannot be read or has no header.
    pub fn read(name: &str) -> Self {
        Self::read_path(&testdata(name))
    }

    /// Reads the table at `path` (one only a single crate uses, in its own `tests/data/`).
    pub fn read_path(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self::parse(&text).unwrap_or_else(|| panic!("{} has no header row", path.display()))
    }

    /// The table in `text`, or `None` if it has no header row.
    pub fn parse(text: &str) -> Option<Self> {
        let cells = |l: &str| l.split('\t').map(str::to_owned).collect::<Vec<_>>();
        let mut header = None;
        let mut rows = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.strip_prefix('#') {
                Some(comment) if header.is_none() && comment.contains('\t') => {
                    header = Some(cells(comment.trim_start_matches(' ')));
                }
                Some(_) => {}
                None if header.is_none() => header = Some(cells(line)),
                None => rows.push(cells(line)),
            }
        }
        Some(Self {
            header: header?,
            rows,
        })
    }

    /// The index of column `name`; panics listing the header if there is none.
    pub fn column(&self, name: &str) -> usize {
        self.try_column(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The index of column `name`, for a reader that reports a malformed table rather than
    /// panicking (the chaos harness reads the cases after a long run).
    pub fn try_column(&self, name: &str) -> Result<usize, MissingColumn> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| MissingColumn {
                name: name.to_owned(),
                header: self.header.clone(),
            })
    }

    /// Column `name` of every row (an empty string where a row is short).
    pub fn cells<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let i = self.column(name);
        self.rows
            .iter()
            .map(move |row| row.get(i).map_or("", String::as_str))
    }
}

/// A table lacks a column its reader needs.
#[derive(Debug, thiserror::Error)]
#[error("no column {name:?} in {header:?}")]
pub struct MissingColumn {
    pub name: String,
    pub header: Vec<String>,
}

/// One row of `testdata/conformance-cases.tsv`: a scenario of kubernetes-sigs'
/// ingress-controller-conformance, flattened to one request and its expected answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConformanceCase {
    pub id: String,
    pub feature: String,
    /// A file under `testdata/manifests/`.
    pub manifest: String,
    pub scheme: String,
    pub method: String,
    /// The Host header; `<ingress-address>` stands for the address in the Ingress status.
    pub host: String,
    pub path: String,
    /// `None` where the case checks no status (status-only scenarios).
    pub status: Option<u16>,
    /// The Service whose echo pod answers; empty when none does.
    pub service: String,
    /// What else the scenario checks, in words.
    pub other: String,
}

impl ConformanceCase {
    /// Every case of `testdata/conformance-cases.tsv`, in file order.
    pub fn all() -> Vec<Self> {
        Self::from_table(&Table::read("conformance-cases.tsv")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The cases in `table`, which must have the columns of `conformance-cases.tsv`.
    pub fn from_table(table: &Table) -> Result<Vec<Self>, MissingColumn> {
        let col = |name| table.try_column(name);
        let (id, feature, manifest, scheme, method, host, path, status, service, other) = (
            col("case_id")?,
            col("feature")?,
            col("manifest")?,
            col("scheme")?,
            col("method")?,
            col("host_header")?,
            col("path")?,
            col("expect_status")?,
            col("expect_service")?,
            col("expect_other")?,
        );
        Ok(table
            .rows
            .iter()
            .map(|row| {
                let cell = |i: usize| row.get(i).cloned().unwrap_or_default();
                Self {
                    id: cell(id),
                    feature: cell(feature),
                    manifest: cell(manifest),
                    scheme: cell(scheme),
                    method: cell(method),
                    host: cell(host),
                    path: cell(path),
                    status: cell(status).parse().ok(),
                    service: cell(service),
                    other: cell(other),
                }
            })
            .collect())
    }
}

/// Every backend Service name (`service.name`, at any depth) in a manifest object, such as an
/// Ingress of `testdata/manifests/`, added to `out`: the Services whose echo backends a test
/// must start before the object's cases can pass.
pub fn service_names(value: &serde_json::Value, out: &mut BTreeSet<String>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if let Some(name) = map
                .get("service")
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
            {
                out.insert(name.to_owned());
            }
            map.values().for_each(|v| service_names(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| service_names(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_skipped_and_cells_kept_as_written() {
        let table = Table::parse("# source\n\na\tb\tc\n1\t\t3\n# note\n4\t5\n").unwrap();
        assert_eq!(table.header, ["a", "b", "c"]);
        assert_eq!(table.rows, [vec!["1", "", "3"], vec!["4", "5"]]);
        assert_eq!(table.cells("c").collect::<Vec<_>>(), ["3", ""]);
        assert!(Table::parse("# only a comment\n").is_none());
        let commented = Table::parse("# source\n# a\tb\n1\t2\n").unwrap();
        assert_eq!(commented.header, ["a", "b"]);
        assert_eq!(commented.rows, [vec!["1", "2"]]);
    }

    #[test]
    fn a_table_without_a_conformance_column_is_an_error_naming_it() {
        let table = Table::parse("case_id\tfeature\nC1\tx\n").unwrap();
        let err = ConformanceCase::from_table(&table).unwrap_err();
        assert_eq!(err.name, "manifest");
        assert_eq!(
            err.to_string(),
            r#"no column "manifest" in ["case_id", "feature"]"#
        );
    }

    #[test]
    fn service_names_finds_the_default_backend_and_every_rule_backend() {
        let ingress = serde_json::json!({
            "kind": "Ingress",
            "metadata": {"name": "service", "labels": {"service": "not-a-backend"}},
            "spec": {
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 8080}}},
                "rules": [
                    {"http": {"paths": [
                        {"path": "/a", "backend": {"service": {"name": "a", "port": {"name": "http"}}}},
                        {"path": "/b", "backend": {"resource": {"kind": "Bucket", "name": "b"}}},
                    ]}},
                    {"http": {"paths": [
                        {"path": "/c", "backend": {"service": {"name": "a", "port": {"number": 80}}}},
                    ]}},
                ],
            },
        });
        let mut names = BTreeSet::from(["earlier".to_owned()]);
        service_names(&ingress, &mut names);
        assert_eq!(
            names,
            BTreeSet::from(["a", "earlier", "fallback"].map(str::to_owned))
        );
    }

    #[test]
    fn every_conformance_case_names_a_manifest_that_exists() {
        let cases = ConformanceCase::all();
        assert_eq!(cases.len(), 30);
        assert_eq!(cases[0].id, "C01");
        assert_eq!(cases[0].status, Some(200));
        for case in &cases {
            let manifest = testdata(&format!("manifests/{}", case.manifest));
            assert!(manifest.is_file(), "{}: {}", case.id, manifest.display());
        }
    }
}
