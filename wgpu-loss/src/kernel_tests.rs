//! Holds every shader variant to the interface the host declares, with
//! naga: each variant parses and validates (so a shader error fails without
//! a GPU), each entry point uses exactly the bindings [`Kernel::bindings`]
//! declares (number, name, access), the flag constants equal [`flags`], and
//! `struct Params` has the host's field names and offsets.

use std::collections::BTreeSet;

use super::{flags, shader_source, Access, Aliasing, Family, Kernel, Params, Variant};

fn module(family: Family, variant: Variant) -> (naga::Module, naga::valid::ModuleInfo, String) {
    let src = shader_source(family, variant);
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
        panic!(
            "{} ({variant:?}) does not parse:\n{}",
            family.file_name(),
            e.emit_to_string(&src)
        )
    });
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        // Every capability but 16-bit floats: f16 is packed into u32 words,
        // so no variant may need `enable f16` (adapters without SHADER_F16).
        naga::valid::Capabilities::all() - naga::valid::Capabilities::SHADER_FLOAT16,
    )
    .validate(&module)
    .unwrap_or_else(|e| {
        panic!(
            "{} ({variant:?}) fails validation:\n{}",
            family.file_name(),
            e.emit_to_string(&src)
        )
    });
    (module, info, src)
}

#[test]
fn every_shader_variant_parses_and_validates() {
    for family in Family::ALL {
        for variant in family.variants() {
            module(family, variant);
        }
    }
}

/// `(binding, name, access)` of every global an entry point uses.
fn used_bindings(
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: usize,
) -> BTreeSet<(u32, String, &'static str)> {
    let ep_info = info.get_entry_point(entry);
    module
        .global_variables
        .iter()
        .filter(|(handle, _)| !ep_info[*handle].is_empty())
        .filter_map(|(_, var)| {
            let binding = var.binding.as_ref()?;
            assert_eq!(binding.group, 0, "{:?} is not in group 0", var.name);
            let access = match var.space {
                naga::AddressSpace::Uniform => "uniform",
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        "read_write"
                    } else {
                        "read"
                    }
                }
                other => panic!("{:?} in unexpected space {other:?}", var.name),
            };
            Some((
                binding.binding,
                var.name.clone().unwrap_or_default(),
                access,
            ))
        })
        .collect()
}

#[test]
fn every_entry_point_uses_exactly_the_declared_bindings() {
    let mut mismatches = Vec::new();
    for family in Family::ALL {
        for variant in family.variants() {
            let (module, info, _) = module(family, variant);
            for kernel in Kernel::ALL.iter().filter(|k| k.family() == family) {
                let index = module
                    .entry_points
                    .iter()
                    .position(|e| e.name == kernel.entry_point())
                    .unwrap_or_else(|| {
                        panic!(
                            "{} has no entry point {}",
                            family.file_name(),
                            kernel.entry_point()
                        )
                    });
                assert_eq!(
                    module.entry_points[index].stage,
                    naga::ShaderStage::Compute,
                    "{kernel:?}"
                );
                let declared: BTreeSet<(u32, String, &'static str)> = kernel
                    .bindings()
                    .iter()
                    .map(|&(slot, access)| {
                        let access = match (access, variant.aliasing) {
                            (Access::Uniform, _) => "uniform",
                            (Access::Read, Aliasing::Separate) => "read",
                            _ => "read_write",
                        };
                        (slot.index, slot.name.to_string(), access)
                    })
                    .collect();
                let used = used_bindings(&module, &info, index);
                if used != declared {
                    mismatches.push(format!(
                        "{kernel:?} ({variant:?}):\n  WGSL uses        {used:?}\n  bindings() says  {declared:?}"
                    ));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} kernel variants differ from Kernel::bindings:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn every_entry_point_of_every_file_is_a_declared_kernel() {
    for family in Family::ALL {
        let (module, _, _) = module(family, Variant::all()[0]);
        for entry in &module.entry_points {
            assert!(
                Kernel::ALL
                    .iter()
                    .any(|k| k.family() == family && k.entry_point() == entry.name),
                "{} declares entry point {} that no Kernel names",
                family.file_name(),
                entry.name
            );
        }
    }
}

/// The `u32` value of every module-scope `const` whose name starts with `prefix`.
fn constants(module: &naga::Module, prefixes: &[&str]) -> BTreeSet<(String, u32)> {
    module
        .constants
        .iter()
        .filter_map(|(_, c)| {
            let name = c.name.clone()?;
            if !prefixes.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            match module.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::U32(v)) => Some((name, v)),
                ref other => panic!("{name} is not a u32 literal: {other:?}"),
            }
        })
        .collect()
}

#[test]
fn flag_constants_match_the_declaration() {
    let variant = Variant::all()[0];
    for (family, declared) in [
        (Family::CrossEntropy, flags::cross_entropy::ALL),
        (Family::Binary, flags::binary::ALL),
        (Family::Softmax, &[][..]),
        (Family::Copy, flags::copy::ALL),
        (Family::Linear, flags::linear::ALL),
        (Family::LinearCrossEntropy, flags::linear_cross_entropy::ALL),
    ] {
        let (module, _, _) = module(family, variant);
        let wgsl = constants(&module, &["FLAG_", "REDUCTION_"]);
        let declared: BTreeSet<(String, u32)> =
            declared.iter().map(|&(n, v)| (n.to_string(), v)).collect();
        assert_eq!(
            wgsl,
            declared,
            "{}: WGSL constants (left) differ from kernels::flags (right)",
            family.file_name()
        );
    }
}

/// Every family holds `common.wgsl`'s option bits and the overrides the
/// host sets when it builds a pipeline (`build_pipeline`).
#[test]
fn spec_constants_and_overrides_match_the_declaration() {
    let declared: BTreeSet<(String, u32)> = flags::spec::ALL
        .iter()
        .map(|&(n, v)| (n.to_string(), v))
        .collect();
    for family in Family::ALL {
        let (module, _, _) = module(family, family.variants()[0]);
        assert_eq!(
            constants(&module, &["SPEC_"]),
            declared,
            "{}: WGSL SPEC_ constants (left) differ from kernels::flags::spec (right)",
            family.file_name()
        );
        let overrides: BTreeSet<String> = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect();
        let set: BTreeSet<String> = ["WG", "TPR", "SPEC_KNOWN", "SPEC_ON"]
            .map(String::from)
            .into();
        assert_eq!(overrides, set, "{}: overrides", family.file_name());
    }
}

#[test]
fn params_layout_matches_the_host_struct() {
    let (module, _, _) = module(Family::Softmax, Variant::all()[0]);
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Params"))
        .expect("common.wgsl declares struct Params");
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("Params is not a struct");
    };
    let wgsl: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
        .collect();
    let host: Vec<(String, usize)> = Params::FIELDS
        .iter()
        .map(|&(n, o)| (n.to_string(), o))
        .collect();
    assert_eq!(
        wgsl, host,
        "WGSL struct Params (left) against the host's (right)"
    );
    assert_eq!(*span as usize, std::mem::size_of::<Params>(), "Params size");
}

#[test]
fn every_shader_file_is_used() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let every_source: String = Variant::all()
        .into_iter()
        .flat_map(|v| Family::ALL.map(|f| shader_source(f, v)))
        .collect();
    for dir in [root.clone(), root.join("prelude")] {
        for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
            let path = entry.expect("readable dir entry").path();
            if path.extension().is_none_or(|e| e != "wgsl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable shader");
            assert!(
                every_source.contains(text.trim()),
                "{} is not part of any compiled shader",
                path.display()
            );
        }
    }
}

/// The focal factor `1 - p_y = -expm1(lp)` must not divide by `log(u)` near
/// `u = 1` (Kahan's `(u - 1) x / log(u)`): Vulkan lets `log` be off by 2^-21
/// absolute there, as large as the value itself, and lavapipe's exact `log`
/// hides that from every numerical test on this machine. So the function
/// that computes it may call no `log` at all (it failed before the series).
#[test]
fn focal_expm1_calls_no_log() {
    let (module, _, _) = module(Family::CrossEntropy, Variant::all()[0]);
    let (_, f) = module
        .functions
        .iter()
        .find(|(_, f)| f.name.as_deref() == Some("expm1_accurate"))
        .expect("cross_entropy.wgsl defines expm1_accurate");
    let logs: Vec<_> = f
        .expressions
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                naga::Expression::Math {
                    fun: naga::MathFunction::Log | naga::MathFunction::Log2,
                    ..
                }
            )
        })
        .collect();
    assert!(
        logs.is_empty(),
        "expm1_accurate calls log {} time(s): its accuracy near 0 cannot rest on log",
        logs.len()
    );
}

/// Whether `block` (or a block inside it) calls the function named `name`.
fn calls(module: &naga::Module, block: &naga::Block, name: &str) -> bool {
    block.iter().any(|statement| match statement {
        naga::Statement::Call { function, .. } => {
            module.functions[*function].name.as_deref() == Some(name)
                || calls(module, &module.functions[*function].body, name)
        }
        naga::Statement::Block(b) => calls(module, b, name),
        naga::Statement::If { accept, reject, .. } => {
            calls(module, accept, name) || calls(module, reject, name)
        }
        naga::Statement::Loop {
            body, continuing, ..
        } => calls(module, body, name) || calls(module, continuing, name),
        naga::Statement::Switch { cases, .. } => cases.iter().any(|c| calls(module, &c.body, name)),
        _ => false,
    })
}

/// The traffic plan counts one read of a matrix for held rows where
/// `Kernel::matrix_reads` says so; this holds that model to the shaders:
/// every such kernel's entry point takes the held path (`holds_rows_of`,
/// which `holds_rows()` calls), and no other kernel does.
#[test]
fn kernels_the_plan_counts_as_held_have_a_held_path() {
    use super::slot;
    let variant = Variant::all()[0];
    for kernel in Kernel::ALL {
        let family = kernel.family();
        if !matches!(family, Family::Softmax | Family::CrossEntropy) {
            continue;
        }
        let (module, _, _) = module(family, variant);
        let entry = module
            .entry_points
            .iter()
            .find(|e| e.name == kernel.entry_point())
            .expect("declared entry point exists");
        let held_in_plan = kernel.bindings().iter().any(|&(s, _)| {
            (s == slot::cross_entropy::LOGITS
                || s == slot::softmax::MAT_A
                || s == slot::softmax::MAT_B)
                && kernel.matrix_reads(s, true, false) < kernel.matrix_reads(s, false, false)
        });
        assert_eq!(
            kernel.has_held_path(),
            held_in_plan,
            "{}: Kernel::has_held_path against the plan",
            kernel.entry_point()
        );
        assert_eq!(
            calls(&module, &entry.function.body, "holds_rows_of"),
            held_in_plan,
            "{}: the plan {} a held path",
            kernel.entry_point(),
            if held_in_plan {
                "counts"
            } else {
                "does not count"
            }
        );
    }
}

#[test]
fn element_vectors_is_the_binary_shaders_ev() {
    let (module, _, _) = module(Family::Binary, Family::Binary.variants()[0]);
    let ev: BTreeSet<(String, u32)> = constants(&module, &["EV"]);
    assert_eq!(
        ev,
        BTreeSet::from([("EV".to_string(), super::ELEMENT_VECTORS)]),
        "binary.wgsl's EV against kernels::ELEMENT_VECTORS"
    );
}

/// `HELD_SLOTS - HOLD` in `common.wgsl` (the vectors of a held row past
/// its lanes' registers, read again) is what the host's held test allows
/// (`VecWidth::unheld_vectors`), in every variant of the row-kernel files.
#[test]
fn unheld_vectors_is_the_shaders_held_slots_past_hold() {
    for family in [Family::Softmax, Family::CrossEntropy] {
        for variant in family.variants() {
            let (module, _, _) = module(family, variant);
            let value = |name: &str| {
                let c = module
                    .constants
                    .iter()
                    .find(|(_, c)| c.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("{} ({variant:?}) has no {name}", family.file_name()))
                    .1;
                match module.global_expressions[c.init] {
                    naga::Expression::Literal(naga::Literal::U32(v)) => u64::from(v),
                    ref other => panic!("{name} is not a u32 literal: {other:?}"),
                }
            };
            assert_eq!(
                value("HELD_SLOTS") - value("HOLD"),
                variant.width.unheld_vectors(),
                "{} ({variant:?}): HELD_SLOTS - HOLD against VecWidth::unheld_vectors",
                family.file_name()
            );
            if family == Family::Softmax {
                assert_eq!(
                    value("HOLD_PAIR") * Kernel::SoftmaxBackward.held_matrices(),
                    value("HOLD"),
                    "softmax.wgsl ({variant:?}): softmax backward holds HOLD_PAIR vectors of each of its matrices"
                );
            }
        }
    }
}
