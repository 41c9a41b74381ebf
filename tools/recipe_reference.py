"""Print the README's recipe reference table from the schema: python tools/recipe_reference.py"""

from compressor.recipe import schema_reference


def main() -> None:
    print("| key | default | meaning |")
    print("|---|---|---|")
    for key, default, desc in schema_reference():
        print(f"| `{key}` | `{default}` | {desc} |")


if __name__ == "__main__":
    main()
