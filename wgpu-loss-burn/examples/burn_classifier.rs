//! Trains a small burn model, a two-layer perceptron, with this crate's
//! cross-entropy (label smoothing on) as its loss: burn's modules, autodiff
//! and Adam, wgpu-loss's fused loss and gradient on burn's own buffers.
//!
//! The data: 8 classes, each a Gaussian cloud around its own random centre
//! in 16 dimensions. The loss starts near ln 8 = 2.08 and falls.
//!
//! ```sh
//! cargo run --release -p wgpu-loss-burn --example burn_classifier
//! ```

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use wgpu_loss_burn::{cross_entropy, CrossEntropyOptions, Error, SharedDevice};

const CLASSES: usize = 8;
const FEATURES: usize = 16;
const HIDDEN: usize = 64;
const BATCH: usize = 512;

#[derive(Module, Debug)]
pub struct Classifier {
    input: Linear,
    output: Linear,
    activation: Relu,
}

impl Classifier {
    pub fn new(device: &Device) -> Self {
        Self {
            input: LinearConfig::new(FEATURES, HIDDEN).init(device),
            output: LinearConfig::new(HIDDEN, CLASSES).init(device),
            activation: Relu::new(),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.output
            .forward(self.activation.forward(self.input.forward(x)))
    }
}

/// A seeded batch: points around their class's centre, and their classes.
fn batch(step: u64, centres: &[f32], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let mut state = 0x2545_F491_4F6C_DD1D_u64 ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut points = Vec::with_capacity(BATCH * FEATURES);
    let mut classes = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let class = ((uniform() * CLASSES as f32) as usize).min(CLASSES - 1);
        classes.push(class as i64);
        for f in 0..FEATURES {
            // Sum of three uniforms: a bell around the centre.
            let noise = uniform() + uniform() + uniform() - 1.5;
            points.push(centres[class * FEATURES + f] + noise);
        }
    }
    (
        Tensor::from_data(TensorData::new(points, [BATCH, FEATURES]), device),
        Tensor::from_data(TensorData::new(classes, [BATCH]), device),
    )
}

/// Trains for `steps` Adam steps on the autodiff form of `shared`'s device;
/// returns `(step, loss)` every 10 steps and at the last.
pub fn train(shared: &SharedDevice, steps: usize) -> Result<Vec<(usize, f32)>, Error> {
    let device = shared.device().clone().autodiff();
    let mut centre_state = 7u64;
    let centres: Vec<f32> = (0..CLASSES * FEATURES)
        .map(|_| {
            centre_state = centre_state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((centre_state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    let mut model = Classifier::new(&device);
    let mut optimizer = AdamConfig::new().init();
    let options = CrossEntropyOptions {
        label_smoothing: 0.05,
        ..Default::default()
    };
    let mut losses = Vec::new();
    for step in 0..steps {
        let (x, y) = batch(step as u64, &centres, &device);
        let loss = cross_entropy(model.forward(x), y, &options)?;
        if step % 10 == 0 || step + 1 == steps {
            let value = loss
                .clone()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| Error::Burn(format!("reading the loss: {e:?}")))?;
            losses.push((step, value[0]));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-2, model, grads);
    }
    Ok(losses)
}

fn main() -> Result<(), Error> {
    let shared = SharedDevice::from_burn()?;
    println!("adapter: {}", shared.context().describe());
    for (step, loss) in train(&shared, 100)? {
        println!("step {step:>3}: loss {loss:.4}");
    }
    Ok(())
}
