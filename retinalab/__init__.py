"""retinalab: label-efficient diabetic-retinopathy analysis on colour fundus photographs."""

__version__ = "0.1.0"
