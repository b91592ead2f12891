"""Training the trainable parts (heads, projectors, soft prompts) over a frozen backbone."""
