//! Parses and validates every shader variant with naga: a shader error fails
//! here on any machine, GPU or not.

use wgpu_loss::kernels::{shader_source, Family, Kernel, Variant};

fn validate(family: Family, variant: Variant) -> naga::Module {
    let src = shader_source(family, variant);
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
        panic!(
            "{} ({variant:?}) does not parse:\n{}",
            family.file_name(),
            e.emit_to_string(&src)
        )
    });
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| {
        panic!(
            "{} ({variant:?}) fails validation:\n{}",
            family.file_name(),
            e.emit_to_string(&src)
        )
    });
    module
}

#[test]
fn every_shader_variant_parses_and_validates() {
    for family in Family::ALL {
        for variant in Variant::all() {
            validate(family, variant);
        }
    }
}

#[test]
fn every_kernel_names_a_compute_entry_point_of_its_family() {
    for variant in Variant::all() {
        for kernel in Kernel::ALL {
            let module = validate(kernel.family(), variant);
            let entry = module
                .entry_points
                .iter()
                .find(|e| e.name == kernel.entry_point())
                .unwrap_or_else(|| {
                    panic!(
                        "{} has no entry point {}",
                        kernel.family().file_name(),
                        kernel.entry_point()
                    )
                });
            assert_eq!(entry.stage, naga::ShaderStage::Compute, "{kernel:?}");
        }
    }
}

#[test]
fn every_shader_file_is_used_by_a_family() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let name = entry.expect("readable dir entry").file_name();
        let name = name.to_string_lossy();
        if name == "common.wgsl" {
            continue;
        }
        assert!(
            Family::ALL.iter().any(|f| f.file_name() == name),
            "shaders/{name} is not loaded by any kernel family"
        );
    }
}
