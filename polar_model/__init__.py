"""polar_model: Polar-V1 and the ResNet + ConvGRU baseline, losses, metrics, Lightning module."""
