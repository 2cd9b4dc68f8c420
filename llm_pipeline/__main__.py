from llm_pipeline.cli import main
import sys
sys.exit(main())
