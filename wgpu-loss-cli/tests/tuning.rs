//! Every reduction mode of the row kernels against the f64 reference:
//! `wgpu-loss check` (103 checks over awkward shapes and options, plus a
//! bitwise repeat) under tunings that force each mode, with several rows per
//! workgroup and with rows spread over many threads.

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;

use assert_cmd::Command;
use common::gpu;

fn check_with(spec: &str) -> String {
    let out = Command::cargo_bin("wgpu-loss")
        .expect("binary builds")
        .arg("check")
        .env("WGPU_LOSS_ROW_TUNING", spec)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains("checks passed") && !stdout.contains("FAIL"),
        "WGPU_LOSS_ROW_TUNING={spec}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn workgroup_memory_trees_with_several_rows_per_workgroup() {
    if gpu().is_none() {
        return;
    }
    // Whole rows (split_vectors=0: the CPU table splits long ones), so
    // 1x300001 walks one workgroup's tree; lanes by vectors_per_thread
    // alone (held_threads_per_row=0: the CPU table holds short rows on
    // as few lanes as hold them).
    let out = check_with(
        "subgroups=off,workgroup_size=64,max_threads_per_row=64,vectors_per_thread=1,split_vectors=0,\
         held_threads_per_row=0",
    );
    // 5 columns, two vectors (gathered four to a vector): 2 threads per row,
    // 32 rows in each workgroup.
    assert!(
        out.contains("3000x5: 2 threads per row, 32 rows per workgroup of 64, Workgroup"),
        "{out}"
    );
    assert!(
        out.contains("1x300001: 64 threads per row, 1 rows per workgroup of 64, Workgroup"),
        "{out}"
    );
}

#[test]
fn subgroup_modes_where_the_adapter_has_subgroups() {
    let Some(ctx) = gpu() else { return };
    let Some(sg) = ctx.subgroup_sizes() else {
        eprintln!(
            "SKIPPED: {} has no SUBGROUP feature; the workgroup fallback is tested above",
            ctx.adapter_name()
        );
        return;
    };
    // Rows no wider than the smallest subgroup: butterflies only.
    let out = check_with(&format!(
        "subgroups=on,workgroup_size={},max_threads_per_row={},vectors_per_thread=1,held_threads_per_row=0",
        sg.max * 4,
        sg.min
    ));
    assert!(out.contains("Subgroup reduction"), "{out}");
    // Rows over several subgroups: butterflies, then workgroup memory.
    let out = check_with(&format!(
        "subgroups=on,workgroup_size={},max_threads_per_row=256,vectors_per_thread=2,held_threads_per_row=0",
        sg.max
    ));
    assert!(out.contains("SubgroupThenWorkgroup reduction"), "{out}");
    // The discrete-GPU row of the table, whatever this adapter is: one row
    // of 300001 classes (75001 vectors, gathered four columns to a vector)
    // fills as many workgroups as chunks of at least 256 vectors allow (issue
    // 17's occupancy): 292, instead of 19 chunks of 4096.
    let out = check_with(
        "subgroups=on,workgroup_size=256,max_threads_per_row=256,vectors_per_thread=8,\
         split_vectors=4096,split_rows_below=1024,occupancy_workgroups=512,min_split_vectors=256",
    );
    assert!(out.contains("1x300001: rows split in 292 chunks"), "{out}");
    // Without the occupancy rule, chunks of split_vectors alone.
    let out = check_with(
        "subgroups=on,workgroup_size=256,max_threads_per_row=256,vectors_per_thread=8,\
         split_vectors=4096,split_rows_below=1024,occupancy_workgroups=0",
    );
    assert!(out.contains("1x300001: rows split in 19 chunks"), "{out}");
}

#[test]
fn rows_split_across_workgroups_in_every_reduction_mode() {
    if gpu().is_none() {
        return;
    }
    // Chunks of 64 vectors: every check shape wider than 128 vectors is split
    // (1x300001, 75001 vectors, into at most 1024 chunks; 2x4099, 1025
    // vectors, into 17), with ragged last chunks and a gathered last vector.
    for subgroups in ["on", "off"] {
        let out = check_with(&format!(
            "subgroups={subgroups},workgroup_size=64,max_threads_per_row=64,vectors_per_thread=4,\
             split_vectors=64,split_rows_below=1000000,held_threads_per_row=0"
        ));
        assert!(out.contains("1x300001: rows split in 1024 chunks"), "{out}");
        assert!(out.contains("2x4099: rows split in 17 chunks"), "{out}");
    }
}

#[test]
fn a_bad_tuning_spec_is_a_clear_error() {
    if gpu().is_none() {
        return;
    }
    let out = Command::cargo_bin("wgpu-loss")
        .expect("binary builds")
        .arg("info")
        .env("WGPU_LOSS_ROW_TUNING", "workgroup_size=100")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("row_tuning.workgroup_size") && stderr.contains("100"),
        "{stderr}"
    );
}
