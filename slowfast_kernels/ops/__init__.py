"""One module per public op: validation, backend choice, torch.library fake and autograd registrations."""
