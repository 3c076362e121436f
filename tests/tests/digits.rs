//! The digits classifier (real data: scikit-learn's handwritten digits) loses
//! at most one point of test accuracy when baked to 8 bits, in both families.

use qbake::Kernels;
use safetensors::SafeTensors;

mod digits {
    qbake::quantized_model!("../../examples/models/digits.safetensors");
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn quantized_accuracy_is_within_one_point_of_float() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
    let bytes = std::fs::read(format!("{dir}/digits_test.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let images: Vec<f32> = st
        .tensor("images")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let labels: Vec<usize> = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    assert_eq!(images.len(), labels.len() * 64);
    let reference =
        qbake_codegen::reference::Reference::load(format!("{dir}/digits.safetensors").as_ref()).unwrap();
    let correct = |pred: &dyn Fn(&[f32]) -> usize| {
        images
            .chunks_exact(64)
            .zip(&labels)
            .filter(|(x, l)| pred(x) == **l)
            .count()
    };
    let float = correct(&|x| {
        let y: Vec<f32> = reference.run(x).iter().map(|&v| v as f32).collect();
        argmax(&y)
    });
    // The float model is a real classifier, not noise.
    assert!(
        float * 100 >= labels.len() * 95,
        "float accuracy {float}/{}",
        labels.len()
    );
    for kernels in [Kernels::Dequant, Kernels::Hybrid] {
        let model = digits::Model::new(kernels);
        let quantized = correct(&|x| argmax(model.forward(&[x.try_into().unwrap()]).as_flattened()));
        let drop = (float as f64 - quantized as f64) * 100.0 / labels.len() as f64;
        assert!(
            drop <= 1.0,
            "{kernels:?}: {quantized} vs float {float} of {}",
            labels.len()
        );
    }
}
