"""What the user sets: the stack's keys read and checked at once, and the patience a host gets."""
