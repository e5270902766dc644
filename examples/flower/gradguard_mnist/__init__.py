"""A Flower app that trains LeNet on the embedded MNIST sample with a gradguard defense."""
